/*
 * vbench: the CPU benchmark Vireo's Linux guest runs after its ready marker.
 *
 * Built as a static i386 program (gcc -m32 -static -O2) by tests/guests/fetch.sh. The same
 * binary runs natively on the host (the host kernel runs i386 programs) and inside the guest;
 * its checksum depends only on the size argument, so a guest checksum that differs from the
 * native one means the emulated CPU computed something wrong.
 *
 * Each round mixes the kinds of work that stress different parts of an x86 emulator:
 * integer arithmetic (32- and 64-bit multiply and divide, shifts, rotates, bit scans, sign
 * extension), memory copying (libc memcpy/memmove/memset at odd offsets and lengths, plus a
 * byte loop), SHA-256 and CRC32 (both written from their specifications: FIPS 180-4 and the
 * reflected IEEE 802.3 polynomial), a switch-dispatched bytecode interpreter (indirect jumps)
 * and libc qsort (calls through a function pointer).
 *
 * Usage: vbench [ROUNDS]   (default 200: ~50 ms natively on this project's 2-core EPYC VM;
 *                          a round is ~0.24 ms, so 6000 rounds take ~1.5 s)
 * Prints: VBENCH size=N selftest=ok checksum=0x<16 hex> time_ms=<ms>.<us>
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MEM_BYTES 16384u
#define SHA_BYTES 8192u
#define SORT_COUNT 512u
#define ARITH_STEPS 3000u
#define VM_LOOPS 1200u

/* ---- checksum accumulator: FNV-1a over 64-bit words, so every result is order-sensitive */

static uint64_t fold(uint64_t h, uint64_t v)
{
    h ^= v;
    h *= 0x100000001b3ull;
    return h;
}

/* ---- SHA-256 (FIPS 180-4) ---- */

static const uint32_t sha_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

static uint32_t ror32(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

static void sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64];
    for (unsigned t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | p[4 * t + 3];
    for (unsigned t = 16; t < 64; t++) {
        uint32_t s0 = ror32(w[t - 15], 7) ^ ror32(w[t - 15], 18) ^ (w[t - 15] >> 3);
        uint32_t s1 = ror32(w[t - 2], 17) ^ ror32(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (unsigned t = 0; t < 64; t++) {
        uint32_t t1 = k + (ror32(e, 6) ^ ror32(e, 11) ^ ror32(e, 25)) + ((e & f) ^ (~e & g)) +
                      sha_k[t] + w[t];
        uint32_t t2 = (ror32(a, 2) ^ ror32(a, 13) ^ ror32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
}

/* Digest of len bytes as eight big-endian words. */
static void sha256(const uint8_t *msg, size_t len, uint32_t out[8])
{
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t whole = len & ~(size_t)63;
    for (size_t i = 0; i < whole; i += 64)
        sha256_block(h, msg + i);
    /* Padding: 0x80, zeros, then the bit length big-endian in the last 8 bytes. */
    uint8_t tail[128];
    size_t rest = len - whole;
    memset(tail, 0, sizeof tail);
    memcpy(tail, msg + whole, rest);
    tail[rest] = 0x80;
    size_t tail_len = rest + 1 + 8 <= 64 ? 64 : 128;
    uint64_t bits = (uint64_t)len * 8;
    for (unsigned i = 0; i < 8; i++)
        tail[tail_len - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < tail_len; i += 64)
        sha256_block(h, tail + i);
    memcpy(out, h, sizeof h);
}

/* ---- CRC32: reflected polynomial 0xEDB88320, initial and final value all ones ---- */

static uint32_t crc_table[256];

static void crc32_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (unsigned b = 0; b < 8; b++)
            c = (c >> 1) ^ (0xedb88320u & -(c & 1));
        crc_table[n] = c;
    }
}

static uint32_t crc32_table(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* The bit-at-a-time form: branches on data, unlike the table form. */
static uint32_t crc32_bitwise(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (unsigned b = 0; b < 8; b++) {
            if (crc & 1)
                crc = (crc >> 1) ^ 0xedb88320u;
            else
                crc >>= 1;
        }
    }
    return ~crc;
}

/* ---- integer arithmetic ---- */

static uint32_t xorshift32(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

static uint64_t rotl64(uint64_t x, unsigned n)
{
    n &= 63;
    return n ? (x << n) | (x >> (64 - n)) : x;
}

static unsigned popcount_loop(uint32_t x)
{
    unsigned n = 0;
    while (x) {
        x &= x - 1;
        n++;
    }
    return n;
}

static uint64_t arith(uint32_t round)
{
    uint32_t x = 0x2545f491u ^ (round * 0x9e3779b9u);
    if (!x)
        x = 1;
    uint64_t acc = 0x0123456789abcdefull;
    int32_t sacc = 0;
    for (uint32_t i = 0; i < ARITH_STEPS; i++) {
        uint32_t v = xorshift32(&x);
        uint32_t d = (v >> 9) | 1;
        acc += (uint64_t)v * (v >> 3);
        acc ^= v / d + v % (d | 3);
        /* Signed division by small negative and positive divisors (never -1 on INT_MIN). */
        int32_t s = (int32_t)v >> 1;
        int32_t sd = ((int32_t)(i & 15) - 8) | 1;
        sacc += s / sd + s % sd;
        sacc ^= (int8_t)v + (int16_t)(v >> 8);
        acc = rotl64(acc, v & 63) + (uint64_t)(int64_t)sacc;
        acc += (unsigned)__builtin_clz(v | 1) + ((unsigned)__builtin_ctz(v | 0x80000000u) << 8);
        acc += popcount_loop(v) << 16;
        if ((i & 15) == 0) /* 64-bit division goes through libgcc's helpers on i386 */
            acc += acc / ((uint64_t)v | 1) + (uint64_t)((int64_t)acc % -(int64_t)(d | 1));
        acc -= (acc >> 37) * 3;
    }
    return acc ^ (uint64_t)(uint32_t)sacc << 32;
}

/* ---- memory copying ---- */

static uint8_t mem_src[MEM_BYTES];
static uint8_t mem_dst[MEM_BYTES];

static uint64_t memory(uint32_t round)
{
    uint32_t s = round * 2654435761u + 7;
    for (unsigned k = 0; k < 12; k++) {
        uint32_t len = xorshift32(&s) % (MEM_BYTES / 2);
        uint32_t from = xorshift32(&s) % (MEM_BYTES - len);
        uint32_t to = xorshift32(&s) % (MEM_BYTES - len);
        switch (k & 3) {
        case 0:
            memcpy(mem_dst + to, mem_src + from, len);
            break;
        case 1: /* overlapping, either direction */
            memmove(mem_dst + to, mem_dst + from, len);
            break;
        case 2:
            memset(mem_dst + to, (int)(s & 0xff), len / 8);
            break;
        case 3: /* reversed byte copy */
            for (uint32_t i = 0; i < len; i++)
                mem_dst[to + i] = mem_src[from + len - 1 - i] ^ (uint8_t)i;
            break;
        }
    }
    /* Feed the result back into the source so rounds depend on each other. */
    uint32_t at = round % (MEM_BYTES / 64);
    memcpy(mem_src + at * 64, mem_dst + (MEM_BYTES - 64 - at * 64), 64);
    return crc32_table(round, mem_dst, MEM_BYTES);
}

/* ---- SHA-256 and CRC32 work ---- */

static uint64_t hashing(uint32_t round)
{
    uint32_t d[8];
    uint32_t off = (round * 97) % (MEM_BYTES - SHA_BYTES);
    sha256(mem_dst + off, SHA_BYTES - (round & 63), d);
    uint64_t h = 0;
    for (unsigned i = 0; i < 8; i++)
        h = fold(h, d[i]);
    return fold(h, crc32_bitwise(0, mem_src + (round & 1023), 256));
}

/* ---- bytecode interpreter ---- */

enum op {
    OP_PUSH,  /* imm32 */
    OP_LOAD,  /* reg */
    OP_STORE, /* reg */
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_XOR,
    OP_SHL,   /* imm8 */
    OP_SHR,   /* imm8 */
    OP_DUP,
    OP_SWAP,
    OP_JNZ,   /* pops; rel16 */
    OP_JODD,  /* peeks; rel16 */
    OP_DEC,   /* reg */
    OP_HALT,
};

/*
 * r0 = seed, r1 = accumulator, r2 = loop counter. Each loop: a Collatz-like step on r0
 * (3n+1 when odd, n/2 when even, wrapping at 32 bits), then r1 = ((r1 * 33) ^ r0) * 127,
 * and the counter down to zero. Jump offsets are relative to the next instruction.
 */
static const uint8_t vm_code[] = {
    /*  0 */ OP_LOAD, 0,
    /*  2 */ OP_JODD, 0, 14,              /* -> 19 */
    /*  5 */ OP_LOAD, 0,
    /*  7 */ OP_SHR, 1,
    /*  9 */ OP_STORE, 0,
    /* 11 */ OP_PUSH, 1, 0, 0, 0,
    /* 16 */ OP_JNZ, 0, 12,               /* -> 31 */
    /* 19 */ OP_DUP,
    /* 20 */ OP_DUP,
    /* 21 */ OP_ADD,
    /* 22 */ OP_ADD,
    /* 23 */ OP_PUSH, 1, 0, 0, 0,
    /* 28 */ OP_ADD,
    /* 29 */ OP_STORE, 0,
    /* 31 */ OP_LOAD, 1,
    /* 33 */ OP_PUSH, 33, 0, 0, 0,
    /* 38 */ OP_MUL,
    /* 39 */ OP_LOAD, 0,
    /* 41 */ OP_XOR,
    /* 42 */ OP_DUP,
    /* 43 */ OP_SHL, 7,
    /* 45 */ OP_SWAP,
    /* 46 */ OP_SUB,
    /* 47 */ OP_STORE, 1,
    /* 49 */ OP_DEC, 2,
    /* 51 */ OP_LOAD, 2,
    /* 53 */ OP_JNZ, 0xff, 0xc8,          /* -56 -> 0 */
    /* 56 */ OP_HALT,
};

static uint64_t interpret(uint32_t round)
{
    uint32_t reg[4] = {round * 31 + 27, round, VM_LOOPS, 0};
    uint32_t stack[16];
    unsigned sp = 0;
    unsigned pc = 0;
    uint64_t steps = 0;
    for (;;) {
        uint8_t op = vm_code[pc++];
        steps++;
        switch (op) {
        case OP_PUSH:
            stack[sp++] = (uint32_t)vm_code[pc] | (uint32_t)vm_code[pc + 1] << 8 |
                          (uint32_t)vm_code[pc + 2] << 16 | (uint32_t)vm_code[pc + 3] << 24;
            pc += 4;
            break;
        case OP_LOAD:
            stack[sp++] = reg[vm_code[pc++] & 3];
            break;
        case OP_STORE:
            reg[vm_code[pc++] & 3] = stack[--sp];
            break;
        case OP_ADD:
            sp--;
            stack[sp - 1] += stack[sp];
            break;
        case OP_SUB:
            sp--;
            stack[sp - 1] -= stack[sp];
            break;
        case OP_MUL:
            sp--;
            stack[sp - 1] *= stack[sp];
            break;
        case OP_XOR:
            sp--;
            stack[sp - 1] ^= stack[sp];
            break;
        case OP_SHL:
            stack[sp - 1] <<= vm_code[pc++] & 31;
            break;
        case OP_SHR:
            stack[sp - 1] >>= vm_code[pc++] & 31;
            break;
        case OP_DUP:
            stack[sp] = stack[sp - 1];
            sp++;
            break;
        case OP_SWAP: {
            uint32_t t = stack[sp - 1];
            stack[sp - 1] = stack[sp - 2];
            stack[sp - 2] = t;
            break;
        }
        case OP_JNZ: {
            int16_t rel = (int16_t)(vm_code[pc] << 8 | vm_code[pc + 1]);
            pc += 2;
            if (stack[--sp])
                pc = (unsigned)((int)pc + rel);
            break;
        }
        case OP_JODD: {
            int16_t rel = (int16_t)(vm_code[pc] << 8 | vm_code[pc + 1]);
            pc += 2;
            if (stack[sp - 1] & 1)
                pc = (unsigned)((int)pc + rel);
            else
                sp--;
            break;
        }
        case OP_DEC:
            reg[vm_code[pc++] & 3]--;
            break;
        case OP_HALT:
            return fold(fold(fold(steps, reg[0]), reg[1]), sp);
        default:
            return fold(0xbad, op);
        }
        /* A malformed program must end, not walk off the code or the stack. */
        if (pc >= sizeof vm_code || sp >= 15)
            return fold(0xbad0, pc);
    }
}

/* ---- qsort ---- */

static uint32_t sort_buf[SORT_COUNT];

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static uint64_t sorting(uint32_t round)
{
    uint32_t s = round ^ 0x6d2b79f5u;
    if (!s)
        s = 1;
    /* Narrow values every other round so the sort also sees many duplicates. */
    uint32_t mask = (round & 1) ? 0xffffffffu : 0x3ffu;
    for (unsigned i = 0; i < SORT_COUNT; i++)
        sort_buf[i] = xorshift32(&s) & mask;
    qsort(sort_buf, SORT_COUNT, sizeof sort_buf[0], cmp_u32);
    uint64_t h = 0;
    unsigned unsorted = 0;
    for (unsigned i = 0; i < SORT_COUNT; i++) {
        h += (uint64_t)sort_buf[i] * (i + 1);
        unsorted += i && sort_buf[i - 1] > sort_buf[i];
    }
    return fold(h, unsorted);
}

/* ---- self-test against the specifications' published vectors ---- */

static int selftest(void)
{
    static const struct {
        const char *msg;
        uint32_t digest[8];
    } sha_vectors[] = {
        {"", {0xe3b0c442, 0x98fc1c14, 0x9afbf4c8, 0x996fb924, 0x27ae41e4, 0x649b934c,
              0xa495991b, 0x7852b855}},
        {"abc", {0xba7816bf, 0x8f01cfea, 0x414140de, 0x5dae2223, 0xb00361a3, 0x96177a9c,
                 0xb410ff61, 0xf20015ad}},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         {0x248d6a61, 0xd20638b8, 0xe5c02693, 0x0c3e6039, 0xa33ce459, 0x64ff2167, 0xf6ecedd4,
          0x19db06c1}},
    };
    int ok = 1;
    for (unsigned i = 0; i < sizeof sha_vectors / sizeof sha_vectors[0]; i++) {
        uint32_t d[8];
        sha256((const uint8_t *)sha_vectors[i].msg, strlen(sha_vectors[i].msg), d);
        if (memcmp(d, sha_vectors[i].digest, sizeof d) != 0) {
            printf("VBENCH selftest: sha256 vector %u wrong\n", i);
            ok = 0;
        }
    }
    const uint8_t *check = (const uint8_t *)"123456789";
    if (crc32_table(0, check, 9) != 0xcbf43926u || crc32_bitwise(0, check, 9) != 0xcbf43926u) {
        printf("VBENCH selftest: crc32 check value wrong\n");
        ok = 0;
    }
    return ok;
}

int main(int argc, char **argv)
{
    long size = 200;
    if (argc > 1) {
        char *end;
        size = strtol(argv[1], &end, 10);
        if (*end || size < 0) {
            fprintf(stderr, "usage: vbench [ROUNDS]\n");
            return 2;
        }
    }
    crc32_init();
    int ok = selftest();

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint32_t s = 0x12345678;
    for (unsigned i = 0; i < MEM_BYTES; i++)
        mem_src[i] = (uint8_t)(xorshift32(&s) >> 24);
    memset(mem_dst, 0, sizeof mem_dst);
    uint64_t sum = 0xcbf29ce484222325ull;
    for (uint32_t r = 0; r < (uint32_t)size; r++) {
        sum = fold(sum, arith(r));
        sum = fold(sum, memory(r));
        sum = fold(sum, hashing(r));
        sum = fold(sum, interpret(r));
        sum = fold(sum, sorting(r));
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);

    uint64_t us = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000u +
                  (uint64_t)((t1.tv_nsec - t0.tv_nsec) / 1000);
    printf("VBENCH size=%ld selftest=%s checksum=0x%016llx time_ms=%llu.%03u\n", size,
           ok ? "ok" : "FAIL", (unsigned long long)sum, (unsigned long long)(us / 1000),
           (unsigned)(us % 1000));
    return ok ? 0 : 1;
}
