/* testos user runtime. */
#include "testos/user/ulib.h"

void exit(int status)
{
    syscall1(SYS_EXIT, status);
    for (;;)
        ;
}

struct out {
    char *buf;
    size_t size, len;
};

static void out_c(struct out *o, char c)
{
    if (o->len + 1 < o->size)
        o->buf[o->len] = c;
    o->len++;
}

static void out_pad(struct out *o, const char *s, int len, int width, int left, char pad)
{
    if (!left)
        for (; width > len; width--)
            out_c(o, pad);
    for (int i = 0; i < len; i++)
        out_c(o, s[i]);
    if (left)
        for (; width > len; width--)
            out_c(o, ' ');
}

/* %s %c %d %u %x %p %%, with '-', '0' and a width. */
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct out o = { buf, size, 0 };
    char tmp[16];
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            out_c(&o, *fmt);
            continue;
        }
        int left = 0, width = 0;
        char pad = ' ';
        for (fmt++; *fmt == '-' || *fmt == '0'; fmt++) {
            if (*fmt == '-')
                left = 1;
            else
                pad = '0';
        }
        for (; *fmt >= '0' && *fmt <= '9'; fmt++)
            width = width * 10 + (*fmt - '0');
        if (*fmt == 'l')
            fmt++;
        int n = 0;
        uint32_t v;
        unsigned base = 10;
        switch (*fmt) {
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            out_pad(&o, s, (int)strlen(s), width, left, ' ');
            continue;
        }
        case 'c':
            tmp[0] = (char)va_arg(ap, int);
            out_pad(&o, tmp, 1, width, left, ' ');
            continue;
        case 'd': {
            int32_t x = va_arg(ap, int32_t);
            if (x < 0) {
                out_c(&o, '-');
                width = width ? width - 1 : 0;
                v = -(uint32_t)x;
            } else {
                v = (uint32_t)x;
            }
            break;
        }
        case 'u':
            v = va_arg(ap, uint32_t);
            break;
        case 'x':
        case 'p':
            v = va_arg(ap, uint32_t);
            base = 16;
            break;
        case '%':
            out_c(&o, '%');
            continue;
        case 0:
            fmt--;
            continue;
        default:
            out_c(&o, '%');
            out_c(&o, *fmt);
            continue;
        }
        char rev[12];
        do {
            rev[n++] = "0123456789abcdef"[v % base];
            v /= base;
        } while (v);
        for (int i = 0; i < n; i++)
            tmp[i] = rev[n - 1 - i];
        out_pad(&o, tmp, n, width, left, pad);
    }
    if (o.size)
        o.buf[o.len < o.size ? o.len : o.size - 1] = 0;
    return (int)o.len;
}

int snprintf(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(buf, n, fmt, ap);
    va_end(ap);
    return r;
}

int printf(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    write(1, buf, r < (int)sizeof(buf) ? (uint32_t)r : sizeof(buf) - 1);
    return r;
}

void puts(const char *s)
{
    write(1, s, strlen(s));
}

void report(const char *name, int ok, const char *fmt, ...)
{
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    testreport(name, ok, msg);
}

void *memset(void *d, int c, size_t n)
{
    uint8_t *p = d;
    while (n--)
        *p++ = (uint8_t)c;
    return d;
}

void *memcpy(void *d, const void *s, size_t n)
{
    uint8_t *p = d;
    const uint8_t *q = s;
    while (n--)
        *p++ = *q++;
    return d;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const uint8_t *p = a, *q = b;
    for (; n; n--, p++, q++)
        if (*p != *q)
            return *p - *q;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return (uint8_t)*a - (uint8_t)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n; n--, a++, b++) {
        if (*a != *b)
            return (uint8_t)*a - (uint8_t)*b;
        if (!*a)
            return 0;
    }
    return 0;
}

int atoi(const char *s)
{
    int v = 0, neg = 0;
    while (*s == ' ')
        s++;
    if (*s == '-')
        neg = 1, s++;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return neg ? -v : v;
}
