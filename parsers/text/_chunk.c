/*
 * Compiled passes over a chunk of ftrace text: its line bounds, the mail-damage test, and the
 * tracefs prefix split of kvmtrace.parsers.text.scan, each one pass per line.
 *
 * Why: the text reader's goal is a million lines per CPU second, 1 us a line in all. The numpy
 * forms of these passes touch every byte several times (a comparison array per byte, a
 * nonzero over it); memchr and one pass per line touch each byte once.
 *
 * The prefix split. Why: the numpy split (scan.split_general and layout.split) makes ~40 passes over the
 * chunk's lines, each a gather of one column; it was a third of the text reader's CPU time.
 * This makes one pass per line with the same acceptance rules, stated once more here next to
 * the code; tests/test_text_scan.py checks that both take the same lines with the same
 * values, on every real text twin and on the damaged and hand-made lines of the numpy tests.
 *
 * A line is taken only when all of these hold (else it is left to the string path):
 *   ASCII (checked here unless the caller knows the chunk is), at least 40 bytes;
 *   columns 0-15: blanks, then the task name, whose first byte is not '>' or '|'; '-' at 16;
 *   the pid: 1-8 digits from column 17, then blanks up to " [" ('[' the first at 19-31);
 *   "[ddd] ", then 4 or 5 flags characters (no blank, '[', ']' or ':'), then ' ';
 *   the first ':' of columns 40-62 followed by ' ' ends the timestamp: blanks, 1-9 digits,
 *   '.', 1-8 digits (the '.' is the first of the 9 bytes before the ':');
 *   after ": " the event name, a word ([0-9A-Za-z_]+) ending at the first ':' within 48 bytes;
 *   then the end of the line, or ' ' and either the end or a byte that is not a blank.
 * Every test reads bytes of the line only: each byte the numpy split reads past a line's end
 * lies after the event name's ':', which must be within the line for the line to be taken.
 *
 * Outputs, per taken line k: its index, pid, cpu, ts (ns), the preempt count and whether the
 * flags give one, and three Arrow string views (task name, event name, arguments) into the
 * chunk's bytes, which must stay below 2 GiB (views hold 32-bit offsets).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static int is_blank(unsigned char c) { return c == ' ' || (c >= 9 && c <= 13); }
static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static int is_word(unsigned char c) { return is_digit(c) || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; }
static int is_flag(unsigned char c) { return !is_blank(c) && c != '[' && c != ']' && c != ':'; }

/* A flags character's value as trace-cmd reads the preempt digit: hex, '.' is 0, else -1. */
static int hexval(unsigned char c)
{
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return c == '.' ? 0 : -1;
}

static const int64_t pow10[9] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};

static int64_t number(const unsigned char *p, Py_ssize_t n)
{
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        v = v * 10 + (p[i] - '0');
    return v;
}

/* An Arrow string view of data[start, start + len). */
static void put_view(uint32_t *view, const unsigned char *data, Py_ssize_t start, Py_ssize_t len)
{
    memset(view, 0, 16);
    view[0] = (uint32_t)len;
    if (len <= 12) {
        memcpy(view + 1, data + start, (size_t)len);
    } else {
        memcpy(view + 1, data + start, 4);
        view[3] = (uint32_t)start; /* view[2]: buffer 0 */
    }
}

struct split {
    int32_t pid;
    int16_t cpu;
    int64_t ts;
    int preempt, preempt_ok;
    Py_ssize_t comm, event, event_len, args;
};

/* Whether line h[0, n) is taken; its values in *out when it is. */
static int split_line(const unsigned char *h, Py_ssize_t n, int check_ascii, struct split *out)
{
    Py_ssize_t j, comm, lb, pid_end, f0, t0, colon, dot, e0, a0;
    const unsigned char *found;
    int five, four;
    if (n < 40)
        return 0;
    if (check_ascii)
        for (j = 0; j < n; j++)
            if (h[j] >= 0x80)
                return 0;
    for (comm = 0; comm < 16 && is_blank(h[comm]); comm++)
        ;
    if (comm == 16 || h[16] != '-' || h[comm] == '>' || h[comm] == '|')
        return 0;
    found = memchr(h + 17, '[', 15);
    lb = found ? found - h : 32;
    if (lb == 32 || lb < 19 || h[lb - 1] != ' ')
        return 0;
    for (pid_end = 17; pid_end < 31 && is_digit(h[pid_end]); pid_end++)
        ;
    if (pid_end == 17 || pid_end - 17 > 8)
        return 0;
    for (j = pid_end; j < lb && j < 31; j++)
        if (h[j] != ' ')
            return 0;
    if (!is_digit(h[lb + 1]) || !is_digit(h[lb + 2]) || !is_digit(h[lb + 3]) || h[lb + 4] != ']' || h[lb + 5] != ' ')
        return 0;
    f0 = lb + 6;
    if (f0 + 6 > n) /* a line this short cannot hold the timestamp's ": " after the flags */
        return 0;
    five = is_flag(h[f0]) && is_flag(h[f0 + 1]) && is_flag(h[f0 + 2]) && is_flag(h[f0 + 3]);
    four = five && h[f0 + 4] == ' ';
    five = five && is_flag(h[f0 + 4]) && h[f0 + 5] == ' ';
    if (!five && !four)
        return 0;
    t0 = f0 + (five ? 6 : 5);
    found = memchr(h + 40, ':', (size_t)(n < 64 ? n - 40 : 24));
    colon = found ? found - h : 64;
    if (colon >= 63 || colon + 1 >= n || h[colon + 1] != ' ')
        return 0;
    found = memchr(h + colon - 9, '.', 9);
    dot = found ? found - h : colon;
    if (dot == colon || colon - dot < 2 || dot - t0 < 1 || dot - t0 > 16)
        return 0;
    for (j = dot + 1; j < colon; j++)
        if (!is_digit(h[j]))
            return 0;
    /* The seconds: blanks, then 1-9 digits up to the '.'. */
    for (j = t0; j < dot && h[j] == ' '; j++)
        ;
    if (j == dot || dot - j > 9)
        return 0;
    for (Py_ssize_t d = j; d < dot; d++)
        if (!is_digit(h[d]))
            return 0;
    out->ts = number(h + j, dot - j) * 1000000000 + number(h + dot + 1, colon - dot - 1) * pow10[9 - (colon - dot - 1)];
    e0 = colon + 2;
    for (j = e0; j < e0 + 48 && j < n && h[j] != ':'; j++)
        if (!is_word(h[j]))
            return 0;
    if (j == e0 || j == e0 + 48 || j == n)
        return 0;
    a0 = j + 1;
    if (a0 < n && (h[a0] != ' ' || (a0 + 1 < n && is_blank(h[a0 + 1]))))
        return 0;
    {
        int p3 = hexval(h[f0 + 3]), p4 = five ? hexval(h[f0 + 4]) : 0;
        out->preempt_ok = p3 >= 0 && p4 >= 0;
        out->preempt = out->preempt_ok ? p3 + 16 * p4 : 0;
    }
    out->pid = (int32_t)number(h + 17, pid_end - 17);
    out->cpu = (int16_t)number(h + lb + 1, 3);
    out->comm = comm;
    out->event = e0;
    out->event_len = j - e0;
    out->args = a0 + 1 < n ? a0 + 1 : n;
    return 1;
}

/* Acquire obj's buffer: read-only (item 0), or writable with room for n items of item bytes. */
static int take(PyObject *obj, Py_buffer *b, Py_ssize_t item, Py_ssize_t n)
{
    if (PyObject_GetBuffer(obj, b, item ? PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS : PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (item && b->len < item * n) {
        PyBuffer_Release(b);
        PyErr_SetString(PyExc_ValueError, "output buffer too small");
        return -1;
    }
    return 0;
}

#define OUTPUTS 9

PyDoc_STRVAR(split_prefix_doc,
"split_prefix(data, starts, ends, check_ascii, index, pid, cpu, ts, preempt, preempt_ok, comm, event, args) -> int\n\n"
"Split the prefix of lines data[starts[i]:ends[i]] (int64); write each taken line's index\n"
"(int64), pid (int32), cpu (int16), ts (int64), preempt (uint8), preempt_ok (bool) and the\n"
"task name, event name and argument views (16 bytes each) to the outputs, in line order.\n"
"Returns how many lines were taken.");

static PyObject *split_prefix(PyObject *self, PyObject *args)
{
    PyObject *objs[3 + OUTPUTS];
    int check_ascii;
    Py_buffer data, starts, ends, outs[OUTPUTS];
    static const Py_ssize_t sizes[OUTPUTS] = {8, 4, 2, 8, 1, 1, 16, 16, 16};
    Py_ssize_t n, taken = 0, i, got = 0;
    PyObject *result = NULL;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOpOOOOOOOOO", &objs[0], &objs[1], &objs[2], &check_ascii, &objs[3], &objs[4],
                          &objs[5], &objs[6], &objs[7], &objs[8], &objs[9], &objs[10], &objs[11]))
        return NULL;
    if (take(objs[0], &data, 0, 0) < 0)
        return NULL;
    if (take(objs[1], &starts, 0, 0) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (take(objs[2], &ends, 0, 0) < 0) {
        PyBuffer_Release(&starts);
        PyBuffer_Release(&data);
        return NULL;
    }
    n = starts.len / 8;
    if (ends.len != starts.len || data.len >= ((Py_ssize_t)1 << 31)) {
        PyErr_SetString(PyExc_ValueError, "starts and ends differ in length, or the data is 2 GiB or more");
        goto done;
    }
    for (got = 0; got < OUTPUTS; got++)
        if (take(objs[3 + got], &outs[got], sizes[got], n) < 0)
            goto done;
    {
        const unsigned char *bytes = data.buf;
        const int64_t *s = starts.buf, *e = ends.buf;
        int64_t *index = outs[0].buf, *ts = outs[3].buf;
        int32_t *pid = outs[1].buf;
        int16_t *cpu = outs[2].buf;
        uint8_t *preempt = outs[4].buf, *preempt_ok = outs[5].buf;
        uint32_t *comm = outs[6].buf, *event = outs[7].buf, *arg = outs[8].buf;
        struct split line;
        for (i = 0; i < n; i++) {
            if (s[i] < 0 || e[i] < s[i] || e[i] > data.len) {
                PyErr_SetString(PyExc_ValueError, "a line's bounds are outside the data");
                goto done;
            }
            if (!split_line(bytes + s[i], e[i] - s[i], check_ascii, &line))
                continue;
            index[taken] = i;
            pid[taken] = line.pid;
            cpu[taken] = line.cpu;
            ts[taken] = line.ts;
            preempt[taken] = (uint8_t)line.preempt;
            preempt_ok[taken] = (uint8_t)line.preempt_ok;
            put_view(comm + 4 * taken, bytes, s[i] + line.comm, 16 - line.comm);
            put_view(event + 4 * taken, bytes, s[i] + line.event, line.event_len);
            put_view(arg + 4 * taken, bytes, s[i] + line.args, e[i] - s[i] - line.args);
            taken++;
        }
    }
    result = PyLong_FromSsize_t(taken);
done:
    for (i = 0; i < got; i++)
        PyBuffer_Release(&outs[i]);
    PyBuffer_Release(&ends);
    PyBuffer_Release(&starts);
    PyBuffer_Release(&data);
    return result;
}

PyDoc_STRVAR(bounds_doc,
"bounds(data) -> bytearray\n\n"
"The start and end of each line of data, as int64: every start, then every end. Lines end at\n"
"'\\n' (the last at the data's end); an end excludes a '\\r' before the '\\n'.");

static PyObject *bounds(PyObject *self, PyObject *args)
{
    PyObject *obj, *out = NULL;
    Py_buffer data;
    Py_ssize_t n = 1, i = 0, at = 0;
    const unsigned char *bytes, *nl;
    (void)self;
    if (!PyArg_ParseTuple(args, "O", &obj) || take(obj, &data, 0, 0) < 0)
        return NULL;
    bytes = data.buf;
    for (nl = bytes; (nl = memchr(nl, '\n', (size_t)(bytes + data.len - nl))) != NULL; nl++)
        n++;
    out = PyByteArray_FromStringAndSize(NULL, 16 * n);
    if (out) {
        int64_t *s = (int64_t *)PyByteArray_AS_STRING(out), *e = s + n;
        for (i = 0; i < n; i++) {
            nl = memchr(bytes + at, '\n', (size_t)(data.len - at));
            s[i] = at;
            e[i] = nl ? nl - bytes : data.len;
            if (e[i] > at && bytes[e[i] - 1] == '\r')
                e[i]--;
            at = nl ? nl - bytes + 1 : at;
        }
    }
    PyBuffer_Release(&data);
    return out;
}

PyDoc_STRVAR(quoted_printable_doc,
"quoted_printable(data, ends) -> bool\n\n"
"Whether the text shows quoted-printable encoding: a line ending in '=' (ends: int64 line\n"
"ends) or an '=3D' anywhere.");

static PyObject *quoted_printable(PyObject *self, PyObject *args)
{
    PyObject *objs[2];
    Py_buffer data, ends;
    int found = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO", &objs[0], &objs[1]))
        return NULL;
    if (take(objs[0], &data, 0, 0) < 0)
        return NULL;
    if (take(objs[1], &ends, 0, 0) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    {
        const unsigned char *bytes = data.buf, *eq = bytes;
        const unsigned char *stop = bytes + data.len;
        const int64_t *e = ends.buf;
        for (Py_ssize_t i = 0; i < ends.len / 8 && !found; i++)
            found = e[i] > 0 && e[i] <= data.len && bytes[e[i] - 1] == '=';
        while (!found && (eq = memchr(eq, '=', (size_t)(stop - eq))) != NULL) {
            found = stop - eq >= 3 && eq[1] == '3' && eq[2] == 'D';
            eq++;
        }
    }
    PyBuffer_Release(&ends);
    PyBuffer_Release(&data);
    return PyBool_FromLong(found);
}

/*
 * A printed form's matcher: one pass per line over its arguments, where the reader would run
 * a regex with captures and then parse each captured number. The program (the bytes of a
 * kvmtrace.parsers.text.program.Program; printf.compile_format builds one where it can) is a
 * sequence of
 *   'L' len:u16 bytes             the literal text;
 *   'N' kind:u8 signed:u8 slot:u8 a number: kind 0 "-?\d+", 1 "\d+", 2 "[0-9a-fA-F]+",
 *                                 3 "(?:0x)?[0-9a-fA-F]+", parsed as int64 (signed) or uint64;
 *   'A' slot:u8 count:u8 then count x (len:u8 bytes value:i64)
 *                                 literal alternatives (slot 255: nothing stored);
 *   'T' slot:u8 min:u8 max:u8 set:32 bytes
 *                                 min to max (255: any number of) bytes of the set (a bitmap);
 *                                 its start and length go to slots slot and slot + 1;
 *   'E'                           ASCII blanks, then the end ("\s*$" on ASCII text).
 * It matches as a backtracking regex engine would, which is what the regex crate's
 * leftmost-first semantics are defined to equal: each op tries its choices in the regex's
 * order (the longest run of digits or set bytes first, then shorter ones; "0x" taken before
 * not; alternatives in their order) and the rest of the program after each, so the first
 * success is the regex's match, with the same captures.
 * A number is invalid (null) where polars' str.to_integer gives null: out of range of its
 * type, or a '-' before an unsigned one.
 */
struct slots {
    int64_t *values;
    uint8_t *valid;
    Py_ssize_t rows, row;
    const unsigned char *text; /* the string's start: spans are stored from it */
};

static int is_hex(unsigned char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

static int hex_digit(unsigned char c) { return is_digit(c) ? c - '0' : (c | 0x20) - 'a' + 10; }

static void store(struct slots *o, int slot, int64_t value, int ok)
{
    o->values[slot * o->rows + o->row] = value;
    o->valid[slot * o->rows + o->row] = (uint8_t)ok;
}

/* A byte's value as a hex digit, or -1 (one load tells both whether it is one and its value). */
static int8_t hex_value[256];

static void init_hex_value(void)
{
    memset(hex_value, -1, sizeof hex_value);
    for (int c = 0; c < 256; c++)
        if (is_hex((unsigned char)c))
            hex_value[c] = (int8_t)hex_digit((unsigned char)c);
}

/* Parse the longest run of digits at d (at most `limit` of them); its end, and its magnitude
 * and whether it overflowed u64 in *mag and *overflow. A shift for hex and a multiplication by
 * a constant for decimal: a division per digit, or a multiplication by a variable base, cost
 * more than the rest of a line's match. */
static const unsigned char *digits_of(const unsigned char *d, const unsigned char *end, int hex, Py_ssize_t limit,
                                      uint64_t *mag, int *overflow)
{
    uint64_t m = 0;
    int over = 0;
    if (end - d > limit)
        end = d + limit;
    if (hex) {
        for (; d < end && hex_value[*d] >= 0; d++) {
            over |= (m >> 60) != 0;
            m = m << 4 | (uint64_t)hex_value[*d];
        }
    } else {
        for (; d < end && (unsigned)(*d - '0') <= 9; d++) {
            unsigned v = (unsigned)(*d - '0');
            over |= m > UINT64_MAX / 10 || (m == UINT64_MAX / 10 && v > UINT64_MAX % 10);
            m = m * 10 + v;
        }
    }
    *mag = m;
    *overflow = over;
    return d;
}

/* Store a magnitude (after a '-' when neg) in the op's slot, valid as polars' str.to_integer is. */
static void store_number(const unsigned char *op, uint64_t mag, int overflow, int neg, struct slots *o)
{
    int ok;
    if (op[2]) /* int64 */
        ok = !overflow && mag <= (uint64_t)INT64_MAX + (uint64_t)neg;
    else
        ok = !overflow && !neg;
    store(o, op[3], neg ? (int64_t)(0 - mag) : (int64_t)mag, ok);
}

static int match(const unsigned char *op, const unsigned char *t, const unsigned char *end, struct slots *o);

static int number_op(const unsigned char *op, const unsigned char *t, const unsigned char *end, struct slots *o)
{
    int kind = op[1], hex = kind >= 2, neg = 0, tries = 0, overflow;
    const unsigned char *starts[2];
    uint64_t mag;
    if (kind == 0 && t < end && *t == '-') { /* "-?": without the '-', "\d+" cannot start at it */
        neg = 1;
        t++;
    }
    if (kind == 3 && end - t >= 2 && t[0] == '0' && t[1] == 'x')
        starts[tries++] = t + 2;
    starts[tries++] = t;
    for (int k = 0; k < tries; k++) {
        const unsigned char *d = starts[k], *run = digits_of(d, end, hex, PY_SSIZE_T_MAX, &mag, &overflow);
        for (; run > d; run = digits_of(d, end, hex, run - d - 1, &mag, &overflow)) {
            store_number(op, mag, overflow, neg, o);
            if (match(op + 4, run, end, o))
                return 1;
        }
    }
    return 0;
}

static int span_op(const unsigned char *op, const unsigned char *t, const unsigned char *end, struct slots *o)
{
    const unsigned char *set = op + 4, *run = t;
    Py_ssize_t least = op[2], most = op[3] == 255 ? PY_SSIZE_T_MAX : op[3];
    while (run < end && run - t < most && (set[*run >> 3] >> (*run & 7) & 1))
        run++;
    for (; run - t >= least; run--) {
        if (op[1] != 255) {
            store(o, op[1], t - o->text, 1);
            store(o, op[1] + 1, run - t, 1);
        }
        if (match(op + 36, run, end, o))
            return 1;
        if (run == t)
            break;
    }
    return 0;
}

static int match(const unsigned char *op, const unsigned char *t, const unsigned char *end, struct slots *o)
{
    switch (*op) {
    case 'L': {
        Py_ssize_t len = op[1] | op[2] << 8;
        if (end - t < len || memcmp(t, op + 3, (size_t)len) != 0)
            return 0;
        return match(op + 3 + len, t + len, end, o);
    }
    case 'N':
        return number_op(op, t, end, o);
    case 'T':
        return span_op(op, t, end, o);
    case 'A': {
        const unsigned char *option = op + 3, *next = op + 3;
        int k;
        for (k = 0; k < op[2]; k++)
            next += 1 + next[0] + 8;
        for (k = 0; k < op[2]; k++, option += 1 + option[0] + 8) {
            Py_ssize_t len = option[0];
            if (end - t < len || memcmp(t, option + 1, (size_t)len) != 0)
                continue;
            if (op[1] != 255) {
                int64_t value;
                memcpy(&value, option + 1 + len, 8);
                store(o, op[1], value, 1);
            }
            if (match(next, t + len, end, o))
                return 1;
        }
        return 0;
    }
    default: /* 'E' */
        while (t < end && is_blank(*t))
            t++;
        return t == end;
    }
}

/* Whether prog is a well-formed program whose slots are below `slots` (no read or write out of bounds). */
static int valid_program(const unsigned char *op, Py_ssize_t len, Py_ssize_t slots)
{
    const unsigned char *end = op + len;
    while (op < end) {
        if (*op == 'E')
            return op + 1 == end;
        if (*op == 'L') {
            if (end - op < 3 || end - op < 3 + (op[1] | op[2] << 8))
                return 0;
            op += 3 + (op[1] | op[2] << 8);
        } else if (*op == 'N') {
            if (end - op < 4 || op[1] > 3 || op[3] >= slots)
                return 0;
            op += 4;
        } else if (*op == 'T') {
            if (end - op < 36 || (op[1] != 255 && op[1] + 1 >= slots) || op[2] > op[3])
                return 0;
            op += 36;
        } else if (*op == 'A') {
            int k, count;
            if (end - op < 3 || (op[1] != 255 && op[1] >= slots))
                return 0;
            count = op[2];
            for (op += 3, k = 0; k < count; k++) {
                if (op >= end || end - op < 1 + op[0] + 8)
                    return 0;
                op += 1 + op[0] + 8;
            }
        } else {
            return 0;
        }
    }
    return 0;
}

PyDoc_STRVAR(match_form_doc,
"match_form(program, offsets, data, hit, values, valid) -> int\n\n"
"Match each string data[offsets[i]:offsets[i + 1]] (int64 offsets, n + 1 of them) against the\n"
"program (see _chunk.c); hit[i] (uint8) says whether it matched, and the number or alternative\n"
"of each slot s is values[s * n + i] (int64; uint64 bits for unsigned numbers), null where\n"
"valid[s * n + i] is 0. Returns how many matched.");

static PyObject *match_form(PyObject *self, PyObject *args)
{
    PyObject *objs[6];
    Py_buffer prog, offsets, data, hit, values, valid;
    Py_ssize_t n, i, hits = 0;
    (void)self;
    if (!PyArg_ParseTuple(args, "OOOOOO", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &objs[5]))
        return NULL;
    if (take(objs[0], &prog, 0, 0) < 0)
        return NULL;
    if (take(objs[1], &offsets, 0, 0) < 0)
        goto no_offsets;
    n = offsets.len / 8 - 1;
    if (take(objs[2], &data, 0, 0) < 0)
        goto no_data;
    if (take(objs[3], &hit, 1, n) < 0)
        goto no_hit;
    if (take(objs[4], &values, 0, 0) < 0)
        goto no_values;
    if (take(objs[5], &valid, 0, 0) < 0)
        goto no_valid;
    {
        const int64_t *off = offsets.buf;
        const unsigned char *bytes = data.buf;
        uint8_t *h = hit.buf;
        struct slots o = {values.buf, valid.buf, n, 0, NULL};
        if (n < 0 || values.readonly || valid.readonly || values.len != 8 * valid.len || (n > 0 && valid.len % n != 0)
            || !valid_program(prog.buf, prog.len, n > 0 ? valid.len / n : 256)) {
            PyErr_SetString(PyExc_ValueError, "a malformed program, or values and valid not writable slots x rows");
            goto fail;
        }
        for (i = 0; i < n; i++) {
            if (off[i] < 0 || off[i + 1] < off[i] || off[i + 1] > data.len) {
                PyErr_SetString(PyExc_ValueError, "a string's offsets are outside the data");
                goto fail;
            }
            o.row = i;
            o.text = bytes + off[i];
            h[i] = (uint8_t)match(prog.buf, bytes + off[i], bytes + off[i + 1], &o);
            hits += h[i];
        }
    }
fail:
    PyBuffer_Release(&valid);
no_valid:
    PyBuffer_Release(&values);
no_values:
    PyBuffer_Release(&hit);
no_hit:
    PyBuffer_Release(&data);
no_data:
    PyBuffer_Release(&offsets);
no_offsets:
    PyBuffer_Release(&prog);
    return PyErr_Occurred() ? NULL : PyLong_FromSsize_t(hits);
}

static PyMethodDef methods[] = {
    {"bounds", bounds, METH_VARARGS, bounds_doc},
    {"quoted_printable", quoted_printable, METH_VARARGS, quoted_printable_doc},
    {"split_prefix", split_prefix, METH_VARARGS, split_prefix_doc},
    {"match_form", match_form, METH_VARARGS, match_form_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_chunk", "Compiled passes over a chunk of ftrace text (see _chunk.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__chunk(void)
{
    init_hex_value();
    return PyModule_Create(&module);
}
