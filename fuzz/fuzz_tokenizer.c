/*
 * libFuzzer target for the WordPiece tokenizer (src/tokenizer.c).
 *
 * The first input byte is max_length, and 255 stands for a limit that no input reaches.
 * The other bytes are the text, which mca_tokenizer_encode gets without a NUL terminator.
 * The vocab is $MCA_MODEL_DIR/vocab.txt when that variable is set, else a small vocab that
 * start-up writes to a temporary file. It has the special tokens, whole words, "##" pieces
 * of every letter and digit, a duplicate line, an empty line and a CRLF line ending.
 *
 * Besides the sanitizers, the harness checks the contract in src/tokenizer.h and aborts
 * on a violation. Every input is encoded twice, with max_length and with a limit above
 * any possible piece count, and both calls must return the same status. The first result
 * must contain the first max_length - 2 pieces of the second, then [SEP], and truncated
 * must be set exactly when pieces were dropped. Every id must be in the vocab. No id may
 * be written on failure, nor past the returned count.
 */
#include "tokenizer.h"

#include "error.h"
#include "mca.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Fills ids[] before each call, so that ids the encoder did not write can be seen. */
#define UNWRITTEN_ID (-7)

/* Every code point decomposes into at most 32 (the encoder's MAX_DECOMPOSITION) and every
 * piece takes at least one of those, so a text of n bytes has at most 32 n pieces. */
#define MAX_PIECES_PER_BYTE 32

static const char small_vocab[] =
    "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"
    "the\nquick\nbrown\nfox\njumps\nover\nlazy\ndog\nhello\nworld\nun\n##aff\n##able\n"
    "straße\ncafe\nnaive\n我\n爱\n日本\n##語\n"
    "the\n"       /* a duplicate: the later id wins */
    "\n"          /* an empty token, which no word can match */
    "crlf\r\n"
    ".\n,\n!\n?\n'\n-\n$\n"
    "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\nl\nm\nn\no\np\nq\nr\ns\nt\nu\nv\nw\nx\ny\nz\n"
    "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n"
    "##a\n##b\n##c\n##d\n##e\n##f\n##g\n##h\n##i\n##j\n##k\n##l\n##m\n##n\n##o\n##p\n##q\n"
    "##r\n##s\n##t\n##u\n##v\n##w\n##x\n##y\n##z\n"
    "##0\n##1\n##2\n##3\n##4\n##5\n##6\n##7\n##8\n##9\n"
    "supercalifragilisticexpialidocious";

static mca_tokenizer_t *tokenizer;
static int32_t special_cls, special_sep;

static void report_violation(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "fuzz_tokenizer: contract violation: ");
    vfprintf(stderr, format, args);
    fprintf(stderr, "\nlast error: %s\n", mca_last_error());
    va_end(args);
    abort();
}

/* Writes the small vocab to a temporary file, loads it and deletes the file. */
static int load_small_vocab(void)
{
    const char *directory = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/mca-fuzz-vocab-XXXXXX",
             directory != NULL && directory[0] != '\0' ? directory : "/tmp");

    int fd = mkstemp(path);
    if (fd < 0) {
        perror("fuzz_tokenizer: failed to create a temporary vocab file");
        return -1;
    }
    size_t length = sizeof small_vocab - 1;
    bool written = write(fd, small_vocab, length) == (ssize_t)length;
    close(fd);
    int status = written ? mca_tokenizer_load(path, &tokenizer) : MCA_ERROR_IO;
    unlink(path);
    if (status != MCA_SUCCESS) {
        fprintf(stderr, "fuzz_tokenizer: failed to load the small vocab from %s: %s\n", path,
                written ? mca_last_error() : "write failed");
        return -1;
    }
    return 0;
}

/* Finds the id of a special token by encoding its text alone. */
static int32_t special_token_id(const char *text)
{
    int32_t ids[3];
    int count = 0;
    if (mca_tokenizer_encode(tokenizer, text, strlen(text), 3, ids, &count, NULL) !=
            MCA_SUCCESS ||
        count != 3) {
        fprintf(stderr, "fuzz_tokenizer: failed to encode %s: %s\n", text, mca_last_error());
        exit(1);
    }
    return ids[1];
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;

    const char *model_dir = getenv("MCA_MODEL_DIR");
    if (model_dir != NULL && model_dir[0] != '\0') {
        char path[4096];
        snprintf(path, sizeof path, "%s/vocab.txt", model_dir);
        if (mca_tokenizer_load(path, &tokenizer) != MCA_SUCCESS) {
            fprintf(stderr, "fuzz_tokenizer: failed to load %s: %s\n", path, mca_last_error());
            exit(1);
        }
    } else if (load_small_vocab() != 0) {
        exit(1);
    }

    special_cls = special_token_id("[CLS]");
    special_sep = special_token_id("[SEP]");
    return 0;
}

/* Encodes into a fresh array of exactly max_length ids, so that AddressSanitizer catches a
 * write past its end. Returns the array, or NULL when max_length < 1. */
static int32_t *encode(const char *text, size_t length, int max_length, int *status,
                       int *count, int *truncated)
{
    int32_t *ids = NULL;
    if (max_length >= 1) {
        ids = malloc((size_t)max_length * sizeof *ids);
        if (ids == NULL)
            report_violation("out of memory for %d ids", max_length);
        for (int i = 0; i < max_length; i++)
            ids[i] = UNWRITTEN_ID;
    }

    *count = -1;
    *truncated = -1;
    mca_error_clear();
    *status = mca_tokenizer_encode(tokenizer, text, length, max_length, ids, count, truncated);
    if (*status != MCA_SUCCESS && mca_last_error()[0] == '\0')
        report_violation("encoding failed with %d without an error message", *status);
    return ids;
}

/* Checks the result of one successful call. */
static void check_ids(const int32_t *ids, int count, int truncated, int max_length)
{
    int vocab_size = mca_tokenizer_vocab_size(tokenizer);

    if (count < 2 || count > max_length)
        report_violation("count is %d for max_length %d", count, max_length);
    if (truncated != 0 && truncated != 1)
        report_violation("truncated is %d", truncated);
    if (ids[0] != special_cls || ids[count - 1] != special_sep)
        report_violation("ids run from %d to %d, expected [CLS] %d to [SEP] %d", ids[0],
                         ids[count - 1], special_cls, special_sep);
    for (int i = 0; i < count; i++) {
        if (ids[i] < 0 || ids[i] >= vocab_size)
            report_violation("id %d at position %d is outside the vocab of %d", ids[i], i,
                             vocab_size);
    }
    for (int i = count; i < max_length; i++) {
        if (ids[i] != UNWRITTEN_ID)
            report_violation("position %d past the count %d was written", i, count);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;

    /* Keep the text in a buffer of its own, so that a read past its end is out of
     * bounds and not the next fuzzer byte. */
    size_t length = size - 1;
    char *text = malloc(length > 0 ? length : 1);
    if (text == NULL)
        return 0;
    memcpy(text, data + 1, length);

    if (length > (size_t)(INT_MAX - 2) / MAX_PIECES_PER_BYTE) {
        free(text);
        return 0;
    }
    int unlimited = (int)(MAX_PIECES_PER_BYTE * length + 2);
    int max_length = data[0] == 255 ? unlimited : data[0];

    int status, count, truncated;
    int32_t *ids = encode(text, length, max_length, &status, &count, &truncated);
    int full_status, full_count, full_truncated;
    int32_t *full_ids = encode(text, length, unlimited, &full_status, &full_count,
                               &full_truncated);

    if (full_status == MCA_SUCCESS) {
        check_ids(full_ids, full_count, full_truncated, unlimited);
        if (full_truncated != 0)
            report_violation("%zu bytes of text gave more than %d ids", length, unlimited);
    } else if (full_status != MCA_ERROR_INVALID_TEXT) {
        report_violation("encoding returned %d, expected MCA_ERROR_INVALID_TEXT", full_status);
    }

    if (max_length < 2) {
        if (status != MCA_ERROR_INVALID_ARGUMENT)
            report_violation("max_length %d returned %d, expected MCA_ERROR_INVALID_ARGUMENT",
                             max_length, status);
    } else if (status != full_status) {
        report_violation("max_length %d returned %d, but max_length %d returned %d",
                         max_length, status, unlimited, full_status);
    }

    if (status != MCA_SUCCESS) {
        for (int i = 0; i < max_length; i++) {
            if (ids[i] != UNWRITTEN_ID)
                report_violation("encoding failed with %d but wrote position %d", status, i);
        }
        if (count != -1 || truncated != -1)
            report_violation("encoding failed with %d but wrote count or truncated", status);
    } else {
        check_ids(ids, count, truncated, max_length);
        bool dropped = full_count > max_length;
        if (truncated != (dropped ? 1 : 0))
            report_violation("truncated is %d, but max_length %d %s the %d ids", truncated,
                             max_length, dropped ? "cannot hold" : "holds", full_count);
        int expected_count = dropped ? max_length : full_count;
        if (count != expected_count)
            report_violation("count is %d, expected %d of the %d ids", count, expected_count,
                             full_count);
        if (memcmp(ids, full_ids, (size_t)(count - 1) * sizeof *ids) != 0)
            report_violation("the %d ids are not the first ids of the untruncated encoding",
                             count);
    }

    free(ids);
    free(full_ids);
    free(text);
    return 0;
}
