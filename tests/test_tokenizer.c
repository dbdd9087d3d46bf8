/*
 * Tests of the WordPiece tokenizer.
 *
 * The reference test encodes every case of tests/data/tokenizer_cases.txt with the model's
 * vocab.txt and compares the ids with tokenizer_ids.txt, which Hugging Face tokenizers
 * wrote (tests/make_tokenizer_ids.py). It is skipped when $MCA_MODEL_DIR/vocab.txt is
 * missing. The other tests use a small vocab that the group setup writes into a
 * temporary directory, so they run without the model.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <utf8proc.h>

#include "mca.h"
#include "tokenizer.h"

/* max_length of the reference cases. make_tokenizer_ids.py rejects longer cases. */
#define REFERENCE_MAX_LENGTH 512

/* Ids of the small vocab below, which are its line numbers. */
enum {
    PAD = 0, UNK, CLS, SEP, MASK, HELLO, WORLD, CONT_WORLD, UN, CONT_AFF, CONT_ABLE, COMMA,
    EXCLAMATION, CAFE, A, CONT_A, UNAFFABLE, CONT_S, ZHONG, SMALL_VOCAB_SIZE
};

static const char small_vocab[] =
    "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\nworld\n##world\nun\n##aff\n##able\n,\n!\n"
    "cafe\na\n##a\nunaffable\n##s\n\xE4\xB8\xAD\n";

typedef struct fixture {
    char directory[64];
    char vocab_path[128];
    mca_tokenizer_t *tokenizer; /* loaded from small_vocab */
} fixture_t;

/* ------------------------------------------------------------------------------------ */
/* Helpers                                                                               */
/* ------------------------------------------------------------------------------------ */

static void write_file(const char *path, const char *contents, size_t length)
{
    FILE *file = fopen(path, "wb");
    assert_non_null(file);
    assert_int_equal(fwrite(contents, 1, length, file), length);
    assert_int_equal(fclose(file), 0);
}

/* Reads a whole file, or returns NULL if it cannot be opened. */
static char *read_file(const char *path, size_t *length)
{
    FILE *file = fopen(path, "rb");
    if (file == NULL)
        return NULL;
    assert_int_equal(fseek(file, 0, SEEK_END), 0);
    long size = ftell(file);
    assert_true(size >= 0);
    assert_int_equal(fseek(file, 0, SEEK_SET), 0);

    char *contents = malloc((size_t)size + 1);
    assert_non_null(contents);
    assert_int_equal(fread(contents, 1, (size_t)size, file), (size_t)size);
    fclose(file);
    contents[size] = '\0';
    *length = (size_t)size;
    return contents;
}

/* Writes `contents` as a vocab file in the fixture's directory and loads it. Returns the
 * status of mca_tokenizer_load and removes the file again. */
static int load_vocab_text(const fixture_t *fixture, const char *contents, size_t length,
                           mca_tokenizer_t **tokenizer)
{
    char path[160];
    snprintf(path, sizeof path, "%s/case-vocab.txt", fixture->directory);
    write_file(path, contents, length);
    int status = mca_tokenizer_load(path, tokenizer);
    assert_int_equal(unlink(path), 0);
    return status;
}

/* Encodes a string with the fixture's tokenizer and checks every id against `expected`. */
static void check_encoding(const fixture_t *fixture, const char *text, size_t length,
                           int max_length, const int32_t *expected, int expected_count,
                           int expected_truncated)
{
    int32_t ids[64];
    int count = -1;
    int truncated = -1;

    assert_true(max_length <= 64);
    assert_int_equal(mca_tokenizer_encode(fixture->tokenizer, text, length, max_length, ids,
                                          &count, &truncated),
                     MCA_SUCCESS);
    assert_int_equal(count, expected_count);
    assert_int_equal(truncated, expected_truncated);
    for (int i = 0; i < count; i++)
        assert_int_equal(ids[i], expected[i]);
}

/* Replaces the escapes of a case line (described in tokenizer_cases.txt) and writes the
 * text to `text`, which must have room for strlen(line) bytes. Returns false for an
 * unknown escape or an invalid code point. */
static bool unescape_case(const char *line, char *text, size_t *length)
{
    size_t out = 0;
    for (const char *p = line; *p != '\0'; p++) {
        if (*p != '\\') {
            text[out++] = *p;
            continue;
        }
        p++;
        switch (*p) {
        case '\\': text[out++] = '\\'; break;
        case 't': text[out++] = '\t'; break;
        case 'n': text[out++] = '\n'; break;
        case 'r': text[out++] = '\r'; break;
        case 'u': {
            char *end;
            if (p[1] != '{' || !isxdigit((unsigned char)p[2]))
                return false;
            long code_point = strtol(p + 2, &end, 16);
            if (*end != '}' || end == p + 2 || end - (p + 2) > 6 || code_point > 0x10FFFF ||
                (code_point >= 0xD800 && code_point <= 0xDFFF))
                return false;
            /* An escape of at least 5 bytes stands for at most 4 bytes of UTF-8. */
            out += (size_t)utf8proc_encode_char((utf8proc_int32_t)code_point,
                                                (utf8proc_uint8_t *)text + out);
            p = end;
            break;
        }
        default:
            return false;
        }
    }
    *length = out;
    return true;
}

/* Splits `contents` into lines in place and returns the lines that do not start with
 * "#". A final "\n" does not start another line. */
static char **split_data_lines(char *contents, size_t length, size_t *line_count)
{
    char **lines = calloc(length + 1, sizeof *lines);
    assert_non_null(lines);
    size_t count = 0;
    char *end = contents + length;

    for (char *line = contents; line < end;) {
        char *newline = memchr(line, '\n', (size_t)(end - line));
        if (newline != NULL)
            *newline = '\0';
        if (line[0] != '#')
            lines[count++] = line;
        line = newline != NULL ? newline + 1 : end;
    }
    *line_count = count;
    return lines;
}

/* Parses "id id id\tcase" into ids and returns the case part, or NULL if malformed. */
static const char *parse_ids_line(char *line, int32_t *ids, int *count)
{
    char *tab = strchr(line, '\t');
    if (tab == NULL)
        return NULL;
    *tab = '\0';

    *count = 0;
    for (char *p = line; *p != '\0';) {
        char *end;
        long id = strtol(p, &end, 10);
        if (end == p || id < 0 || id > INT32_MAX || *count == REFERENCE_MAX_LENGTH)
            return NULL;
        ids[(*count)++] = (int32_t)id;
        p = end;
        while (*p == ' ')
            p++;
    }
    return tab + 1;
}

/* Reports the first difference of one reference case; returns whether the ids match. */
static bool compare_case(const char *written, const int32_t *expected, int expected_count,
                         const int32_t *actual, int actual_count)
{
    int shorter = expected_count < actual_count ? expected_count : actual_count;
    int first = 0;
    while (first < shorter && expected[first] == actual[first])
        first++;
    if (first == shorter && expected_count == actual_count)
        return true;

    print_error("case \"%s\": ids differ at position %d: expected %d ids, got %d\n",
                written, first, expected_count, actual_count);
    print_error("  expected:");
    for (int i = first; i < expected_count && i < first + 8; i++)
        print_error(" %d", expected[i]);
    print_error("\n  got:     ");
    for (int i = first; i < actual_count && i < first + 8; i++)
        print_error(" %d", actual[i]);
    print_error("\n");
    return false;
}

/* ------------------------------------------------------------------------------------ */
/* Fixture                                                                               */
/* ------------------------------------------------------------------------------------ */

static int setup_small_vocab(void **state)
{
    fixture_t *fixture = calloc(1, sizeof *fixture);
    if (fixture == NULL)
        return -1;

    const char *temporary = getenv("TMPDIR");
    if (temporary == NULL || temporary[0] == '\0' || strlen(temporary) > 32)
        temporary = "/tmp";
    snprintf(fixture->directory, sizeof fixture->directory, "%s/mca-tokenizer-XXXXXX",
             temporary);
    if (mkdtemp(fixture->directory) == NULL) {
        free(fixture);
        return -1;
    }
    snprintf(fixture->vocab_path, sizeof fixture->vocab_path, "%s/vocab.txt",
             fixture->directory);

    FILE *file = fopen(fixture->vocab_path, "wb");
    if (file == NULL)
        return -1;
    size_t written = fwrite(small_vocab, 1, sizeof small_vocab - 1, file);
    if (fclose(file) != 0 || written != sizeof small_vocab - 1)
        return -1;
    if (mca_tokenizer_load(fixture->vocab_path, &fixture->tokenizer) != MCA_SUCCESS) {
        print_error("cannot load the small vocab: %s\n", mca_last_error());
        return -1;
    }

    *state = fixture;
    return 0;
}

static int teardown_small_vocab(void **state)
{
    fixture_t *fixture = *state;
    if (fixture == NULL)
        return 0;
    mca_tokenizer_destroy(fixture->tokenizer);
    unlink(fixture->vocab_path);
    rmdir(fixture->directory);
    free(fixture);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* Reference ids from Hugging Face tokenizers                                            */
/* ------------------------------------------------------------------------------------ */

static void test_reference_cases_match_tokenizers(void **state)
{
    (void)state;
    const char *model_dir = getenv("MCA_MODEL_DIR");
    const char *data_dir = getenv("MCA_TEST_DATA_DIR");
    char path[4096];

    if (data_dir == NULL)
        fail_msg("MCA_TEST_DATA_DIR is not set; run the test through meson test");
    if (model_dir == NULL) {
        print_message("MCA_MODEL_DIR is not set; skipping the reference test\n");
        skip();
    }
    snprintf(path, sizeof path, "%s/vocab.txt", model_dir);
    if (access(path, R_OK) != 0) {
        print_message("%s is missing; run tools/setup to install the model\n", path);
        skip();
    }

    mca_tokenizer_t *tokenizer = NULL;
    int status = mca_tokenizer_load(path, &tokenizer);
    if (status != MCA_SUCCESS)
        fail_msg("cannot load %s: %s", path, mca_last_error());
    assert_int_equal(mca_tokenizer_vocab_size(tokenizer), 30522);

    size_t cases_length, ids_length;
    snprintf(path, sizeof path, "%s/tokenizer_cases.txt", data_dir);
    char *cases_contents = read_file(path, &cases_length);
    if (cases_contents == NULL)
        fail_msg("cannot read %s", path);
    snprintf(path, sizeof path, "%s/tokenizer_ids.txt", data_dir);
    char *ids_contents = read_file(path, &ids_length);
    if (ids_contents == NULL)
        fail_msg("cannot read %s", path);

    size_t case_count, ids_count;
    char **cases = split_data_lines(cases_contents, cases_length, &case_count);
    char **id_lines = split_data_lines(ids_contents, ids_length, &ids_count);
    assert_true(case_count >= 40);
    if (ids_count != case_count)
        fail_msg("tokenizer_cases.txt has %zu cases but tokenizer_ids.txt has %zu lines; "
                 "run tests/make_tokenizer_ids.py", case_count, ids_count);

    int mismatches = 0;
    for (size_t i = 0; i < case_count; i++) {
        int32_t expected[REFERENCE_MAX_LENGTH];
        int32_t actual[REFERENCE_MAX_LENGTH];
        int expected_count = 0, actual_count = -1, truncated = -1;

        const char *written = parse_ids_line(id_lines[i], expected, &expected_count);
        if (written == NULL)
            fail_msg("line %zu of tokenizer_ids.txt is malformed", i + 1);
        if (strcmp(written, cases[i]) != 0)
            fail_msg("case %zu is \"%s\" in tokenizer_cases.txt but \"%s\" in "
                     "tokenizer_ids.txt; run tests/make_tokenizer_ids.py",
                     i + 1, cases[i], written);

        char *text = malloc(strlen(cases[i]) + 1);
        assert_non_null(text);
        size_t text_length = 0;
        if (!unescape_case(cases[i], text, &text_length))
            fail_msg("case \"%s\" has an invalid escape", cases[i]);

        status = mca_tokenizer_encode(tokenizer, text, text_length, REFERENCE_MAX_LENGTH,
                                      actual, &actual_count, &truncated);
        free(text);
        if (status != MCA_SUCCESS)
            fail_msg("case \"%s\" failed: %s", cases[i], mca_last_error());
        assert_int_equal(truncated, 0);
        if (!compare_case(cases[i], expected, expected_count, actual, actual_count))
            mismatches++;
    }
    if (mismatches > 0)
        fail_msg("%d of %zu cases differ from Hugging Face tokenizers", mismatches,
                 case_count);

    free(cases);
    free(id_lines);
    free(cases_contents);
    free(ids_contents);
    mca_tokenizer_destroy(tokenizer);
}

/* ------------------------------------------------------------------------------------ */
/* Encoding with the small vocab                                                         */
/* ------------------------------------------------------------------------------------ */

static void test_encode_words_and_punctuation(void **state)
{
    const int32_t expected[] = {CLS, HELLO, COMMA, WORLD, EXCLAMATION, SEP};
    check_encoding(*state, "Hello, WORLD!", 13, 16, expected, 6, 0);
}

static void test_encode_vocab_size(void **state)
{
    const fixture_t *fixture = *state;
    assert_int_equal(mca_tokenizer_vocab_size(fixture->tokenizer), SMALL_VOCAB_SIZE);
}

static void test_encode_longest_match_first(void **state)
{
    const int32_t whole[] = {CLS, UNAFFABLE, SEP};
    const int32_t plural[] = {CLS, UNAFFABLE, CONT_S, SEP};
    const int32_t prefix[] = {CLS, UN, CONT_AFF, SEP};
    const int32_t repeated[] = {CLS, A, CONT_A, CONT_A, CONT_A, SEP};

    check_encoding(*state, "unaffable", 9, 16, whole, 3, 0);
    check_encoding(*state, "unaffables", 10, 16, plural, 4, 0);
    check_encoding(*state, "unaff", 5, 16, prefix, 4, 0);
    check_encoding(*state, "aaaa", 4, 16, repeated, 6, 0);
}

static void test_encode_unmatched_word_is_one_unk(void **state)
{
    /* "hello" matches but "##x" does not, so the whole word becomes one [UNK]. */
    const int32_t expected[] = {CLS, UNK, WORLD, SEP};
    check_encoding(*state, "hellox world", 12, 16, expected, 4, 0);
}

static void test_encode_word_length_limit(void **state)
{
    const fixture_t *fixture = *state;
    char word[101];
    int32_t ids[128];
    int count = 0, truncated = -1;

    /* 100 characters are split into pieces: "a" and 99 times "##a". */
    memset(word, 'a', sizeof word);
    assert_int_equal(mca_tokenizer_encode(fixture->tokenizer, word, 100, 128, ids, &count,
                                          &truncated),
                     MCA_SUCCESS);
    assert_int_equal(count, 102);
    assert_int_equal(ids[1], A);
    assert_int_equal(ids[100], CONT_A);
    assert_int_equal(ids[101], SEP);

    /* 101 characters are one [UNK]. */
    assert_int_equal(mca_tokenizer_encode(fixture->tokenizer, word, 101, 128, ids, &count,
                                          &truncated),
                     MCA_SUCCESS);
    assert_int_equal(count, 3);
    assert_int_equal(ids[1], UNK);

    /* Accents are stripped before counting: 100 times "a" + U+0301 is 100 characters. */
    char accented[300];
    for (int i = 0; i < 100; i++)
        memcpy(accented + 3 * i, "a\xCC\x81", 3);
    assert_int_equal(mca_tokenizer_encode(fixture->tokenizer, accented, 300, 128, ids, &count,
                                          &truncated),
                     MCA_SUCCESS);
    assert_int_equal(count, 102);
}

static void test_encode_empty_text(void **state)
{
    const int32_t expected[] = {CLS, SEP};
    check_encoding(*state, "", 0, 2, expected, 2, 0);
    check_encoding(*state, " \t\r\n ", 5, 8, expected, 2, 0);
}

static void test_encode_nul_bytes_are_dropped(void **state)
{
    /* NUL is a control character, so it disappears without splitting the word. */
    const int32_t expected[] = {CLS, HELLO, CONT_WORLD, SEP};
    check_encoding(*state, "hello\0world", 11, 16, expected, 4, 0);
    check_encoding(*state, "\0hello\0\0world\0", 14, 16, expected, 4, 0);
}

static void test_encode_special_tokens_in_text(void **state)
{
    const int32_t expected[] = {CLS, MASK, HELLO, SEP, UNK, PAD, SEP};
    check_encoding(*state, "[MASK]hello [SEP][UNK] [PAD]", 28, 16, expected, 7, 0);
}

static void test_encode_accents_and_chinese(void **state)
{
    /* "Café" precomposed and decomposed, then U+4E2D between letters without spaces. */
    const int32_t expected[] = {CLS, CAFE, CAFE, A, ZHONG, A, SEP};
    check_encoding(*state, "Caf\xC3\xA9 Cafe\xCC\x81 a\xE4\xB8\xAD" "a", 18, 16, expected, 7,
                   0);
}

/* ------------------------------------------------------------------------------------ */
/* Truncation                                                                            */
/* ------------------------------------------------------------------------------------ */

static void test_truncation_keeps_first_pieces(void **state)
{
    const char text[] = "hello world hello world";
    const int32_t all[] = {CLS, HELLO, WORLD, HELLO, WORLD, SEP};
    const int32_t first_two[] = {CLS, HELLO, WORLD, SEP};
    const int32_t none[] = {CLS, SEP};

    check_encoding(*state, text, sizeof text - 1, 6, all, 6, 0);
    check_encoding(*state, text, sizeof text - 1, 7, all, 6, 0);
    check_encoding(*state, text, sizeof text - 1, 4, first_two, 4, 1);
    check_encoding(*state, text, sizeof text - 1, 2, none, 2, 1);
}

static void test_truncation_inside_a_word(void **state)
{
    /* Pieces are dropped one by one, even in the middle of a word. */
    const int32_t expected[] = {CLS, HELLO, UNAFFABLE, SEP};
    check_encoding(*state, "hello unaffables", 16, 4, expected, 4, 1);
}

static void test_truncation_flag_may_be_null(void **state)
{
    const fixture_t *fixture = *state;
    int32_t ids[3];
    int count = 0;

    assert_int_equal(mca_tokenizer_encode(fixture->tokenizer, "hello world", 11, 3, ids,
                                          &count, NULL),
                     MCA_SUCCESS);
    assert_int_equal(count, 3);
    assert_int_equal(ids[1], HELLO);
    assert_int_equal(ids[2], SEP);
}

/* ------------------------------------------------------------------------------------ */
/* Invalid input                                                                         */
/* ------------------------------------------------------------------------------------ */

static void test_encode_null_arguments(void **state)
{
    const fixture_t *fixture = *state;
    mca_tokenizer_t *tokenizer = fixture->tokenizer;
    int32_t ids[4] = {-7, -7, -7, -7};
    int count = -7, truncated = -7;

    assert_int_equal(mca_tokenizer_encode(NULL, "a", 1, 4, ids, &count, &truncated),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_tokenizer_encode(tokenizer, NULL, 1, 4, ids, &count, &truncated),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_tokenizer_encode(tokenizer, "a", 1, 4, NULL, &count, &truncated),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(mca_tokenizer_encode(tokenizer, "a", 1, 4, ids, NULL, &truncated),
                     MCA_ERROR_INVALID_ARGUMENT);
    assert_int_equal(ids[0], -7);
    assert_int_equal(count, -7);
    assert_int_equal(truncated, -7);
}

static void test_encode_max_length_below_two(void **state)
{
    const fixture_t *fixture = *state;
    const int lengths[] = {1, 0, -1, INT32_MIN};
    int32_t ids[2] = {-7, -7};
    int count = -7;

    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        assert_int_equal(mca_tokenizer_encode(fixture->tokenizer, "a", 1, lengths[i], ids,
                                              &count, NULL),
                         MCA_ERROR_INVALID_ARGUMENT);
        assert_non_null(strstr(mca_last_error(), "max_length"));
    }
    assert_int_equal(ids[0], -7);
    assert_int_equal(count, -7);
}

static void test_encode_invalid_utf8(void **state)
{
    const fixture_t *fixture = *state;
    static const struct {
        const char *name;
        const char *bytes;
        size_t length;
        size_t offset; /* of the first byte of the invalid sequence */
    } cases[] = {
        {"lone continuation byte", "ab\x80", 3, 2},
        {"continuation after ASCII", "hello \xBFworld", 12, 6},
        {"overlong slash, 2 bytes", "a\xC0\xAF", 3, 1},
        {"overlong NUL, 2 bytes", "\xC1\x80", 2, 0},
        {"overlong, 3 bytes", "x\xE0\x80\xAF", 4, 1},
        {"overlong, 4 bytes", "\xF0\x8F\xBF\xBF", 4, 0},
        {"surrogate U+D800", "ok \xED\xA0\x80", 6, 3},
        {"surrogate U+DFFF", "\xED\xBF\xBF", 3, 0},
        {"above U+10FFFF", "\xF4\x90\x80\x80", 4, 0},
        {"5-byte lead", "\xF8\x88\x80\x80\x80", 5, 0},
        {"byte 0xFF", "a\xFF", 2, 1},
        {"truncated 2-byte sequence at the end", "abc\xC3", 4, 3},
        {"truncated 3-byte sequence", "\xE4\xB8 a", 4, 0},
        {"truncated 4-byte sequence at the end", "\xF0\x9F\x98", 3, 0},
        {"sequence cut by the length", "caf\xC3\xA9", 4, 3},
    };
    int32_t ids[16];
    int count = -7, truncated = -7;

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char expected_offset[48];
        ids[0] = -7;
        int status = mca_tokenizer_encode(fixture->tokenizer, cases[i].bytes, cases[i].length,
                                          16, ids, &count, &truncated);
        if (status != MCA_ERROR_INVALID_TEXT)
            fail_msg("%s: status %d, expected MCA_ERROR_INVALID_TEXT", cases[i].name, status);
        snprintf(expected_offset, sizeof expected_offset, "byte offset %zu ", cases[i].offset);
        if (strstr(mca_last_error(), expected_offset) == NULL)
            fail_msg("%s: message \"%s\" does not name \"%s\"", cases[i].name,
                     mca_last_error(), expected_offset);
        assert_int_equal(ids[0], -7);
        assert_int_equal(count, -7);
        assert_int_equal(truncated, -7);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Loading                                                                               */
/* ------------------------------------------------------------------------------------ */

static void test_load_missing_file(void **state)
{
    const fixture_t *fixture = *state;
    char path[160];
    /* Any non-NULL value serves as a sentinel that a failed load must leave alone. */
    mca_tokenizer_t *const untouched = (mca_tokenizer_t *)fixture;
    mca_tokenizer_t *tokenizer = untouched;

    snprintf(path, sizeof path, "%s/no-such-vocab.txt", fixture->directory);
    assert_int_equal(mca_tokenizer_load(path, &tokenizer), MCA_ERROR_IO);
    assert_non_null(strstr(mca_last_error(), path));
    assert_ptr_equal(tokenizer, untouched);

    /* A directory opens but cannot be read. */
    assert_int_equal(mca_tokenizer_load(fixture->directory, &tokenizer), MCA_ERROR_IO);
    assert_ptr_equal(tokenizer, untouched);
}

static void test_load_requires_special_tokens(void **state)
{
    static const char *const required[] = {"[CLS]", "[SEP]", "[UNK]", "[PAD]"};
    const char *const lines[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello"};

    for (size_t missing = 0; missing < 4; missing++) {
        char contents[64] = "";
        for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
            if (strcmp(lines[i], required[missing]) == 0)
                continue;
            strcat(contents, lines[i]);
            strcat(contents, "\n");
        }

        mca_tokenizer_t *tokenizer = NULL;
        int status = load_vocab_text(*state, contents, strlen(contents), &tokenizer);
        if (status != MCA_ERROR_CORRUPT_FILE)
            fail_msg("vocab without %s: status %d, expected MCA_ERROR_CORRUPT_FILE",
                     required[missing], status);
        assert_non_null(strstr(mca_last_error(), required[missing]));
        assert_null(tokenizer);
    }

    /* [MASK] is optional. */
    mca_tokenizer_t *tokenizer = NULL;
    const char minimal[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n";
    assert_int_equal(load_vocab_text(*state, minimal, sizeof minimal - 1, &tokenizer),
                     MCA_SUCCESS);
    assert_int_equal(mca_tokenizer_vocab_size(tokenizer), 4);
    mca_tokenizer_destroy(tokenizer);
}

static void test_load_empty_vocab(void **state)
{
    mca_tokenizer_t *tokenizer = NULL;
    assert_int_equal(load_vocab_text(*state, "", 0, &tokenizer), MCA_ERROR_CORRUPT_FILE);
    assert_null(tokenizer);
}

static void test_load_invalid_utf8_vocab(void **state)
{
    const char contents[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\ncaf\xC3\n";
    mca_tokenizer_t *tokenizer = NULL;

    assert_int_equal(load_vocab_text(*state, contents, sizeof contents - 1, &tokenizer),
                     MCA_ERROR_CORRUPT_FILE);
    assert_non_null(strstr(mca_last_error(), "line 5"));
    assert_null(tokenizer);
}

static void test_load_crlf_and_duplicates(void **state)
{
    /* CRLF line ends, a duplicate whose later line wins, and no final line end. */
    const char contents[] = "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhello\r\nworld\r\nhello";
    mca_tokenizer_t *tokenizer = NULL;
    int32_t ids[8];
    int count = 0;

    assert_int_equal(load_vocab_text(*state, contents, sizeof contents - 1, &tokenizer),
                     MCA_SUCCESS);
    assert_int_equal(mca_tokenizer_vocab_size(tokenizer), 7);
    assert_int_equal(mca_tokenizer_encode(tokenizer, "world hello", 11, 8, ids, &count, NULL),
                     MCA_SUCCESS);
    assert_int_equal(count, 4);
    assert_int_equal(ids[0], 2);
    assert_int_equal(ids[1], 5);
    assert_int_equal(ids[2], 6);
    assert_int_equal(ids[3], 3);
    mca_tokenizer_destroy(tokenizer);
}

static void test_load_null_arguments(void **state)
{
    const fixture_t *fixture = *state;
    mca_tokenizer_t *tokenizer = NULL;

    assert_int_equal(mca_tokenizer_load(NULL, &tokenizer), MCA_ERROR_INVALID_ARGUMENT);
    assert_null(tokenizer);
    assert_int_equal(mca_tokenizer_load(fixture->vocab_path, NULL),
                     MCA_ERROR_INVALID_ARGUMENT);
}

static void test_destroy_accepts_null(void **state)
{
    (void)state;
    mca_tokenizer_destroy(NULL);
}

/* ------------------------------------------------------------------------------------ */
/* Long input                                                                            */
/* ------------------------------------------------------------------------------------ */

#define MEGABYTE (1024 * 1024)

static void test_megabyte_line_truncates(void **state)
{
    const fixture_t *fixture = *state;
    const char pattern[] = "hello world ";
    char *text = malloc(MEGABYTE);
    int32_t ids[512];
    int count = 0, truncated = 0;

    assert_non_null(text);
    for (size_t i = 0; i < MEGABYTE; i++)
        text[i] = pattern[i % (sizeof pattern - 1)];

    assert_int_equal(mca_tokenizer_encode(fixture->tokenizer, text, MEGABYTE, 512, ids,
                                          &count, &truncated),
                     MCA_SUCCESS);
    assert_int_equal(count, 512);
    assert_int_equal(truncated, 1);
    assert_int_equal(ids[0], CLS);
    assert_int_equal(ids[1], HELLO);
    assert_int_equal(ids[510], WORLD);
    assert_int_equal(ids[511], SEP);
    free(text);
}

/* Encodes a whole megabyte line and returns the CPU seconds it took. */
static double encode_whole_line(const fixture_t *fixture, const char *text, size_t length,
                                int expected_count)
{
    int max_length = MEGABYTE + 2;
    int32_t *ids = malloc((size_t)max_length * sizeof *ids);
    int count = 0, truncated = -1;

    assert_non_null(ids);
    clock_t start = clock();
    assert_int_equal(mca_tokenizer_encode(fixture->tokenizer, text, length, max_length, ids,
                                          &count, &truncated),
                     MCA_SUCCESS);
    double seconds = (double)(clock() - start) / CLOCKS_PER_SEC;
    assert_int_equal(count, expected_count);
    assert_int_equal(truncated, 0);
    assert_int_equal(ids[count - 1], SEP);
    free(ids);
    return seconds;
}

static void test_megabyte_line_costs_linear_time(void **state)
{
    const fixture_t *fixture = *state;
    char *text = malloc(MEGABYTE);
    double seconds = 0.0;
    assert_non_null(text);

    /* Many short words: 2 pieces per 12 bytes. */
    const char pattern[] = "hello world ";
    size_t words_length = MEGABYTE - MEGABYTE % (sizeof pattern - 1);
    for (size_t i = 0; i < words_length; i++)
        text[i] = pattern[i % (sizeof pattern - 1)];
    seconds += encode_whole_line(fixture, text, words_length,
                                 (int)(words_length / (sizeof pattern - 1)) * 2 + 2);

    /* One word of a megabyte, which is a single [UNK]. */
    memset(text, 'a', MEGABYTE);
    seconds += encode_whole_line(fixture, text, MEGABYTE, 3);

    /* "a" and then one run of combining characters that NFD must put in canonical order:
     * U+1D16D (class 226) and U+1D165 (class 216) alternate. Both are spacing marks, so
     * they stay in the word, which becomes [UNK]. */
    text[0] = 'a';
    for (size_t i = 1; i + 8 <= MEGABYTE; i += 8)
        memcpy(text + i, "\xF0\x9D\x85\xAD\xF0\x9D\x85\xA5", 8);
    seconds += encode_whole_line(fixture, text, 1 + (MEGABYTE - 1) / 8 * 8, 3);

    /* "a" and then a megabyte of U+0301, a nonspacing mark that accent stripping drops. */
    for (size_t i = 1; i + 2 <= MEGABYTE; i += 2)
        memcpy(text + i, "\xCC\x81", 2);
    seconds += encode_whole_line(fixture, text, 1 + (MEGABYTE - 1) / 2 * 2, 3);

    /* Each case is linear and takes milliseconds; a step quadratic in the line length
     * would take minutes. The bound leaves room for slow machines and sanitizers. */
    print_message("encoded 4 lines of 1 MB in %.3f s of CPU time\n", seconds);
    assert_true(seconds < 2.0);
    free(text);
}

int main(void)
{
    const struct CMUnitTest reference_tests[] = {
        cmocka_unit_test(test_reference_cases_match_tokenizers),
    };
    const struct CMUnitTest small_vocab_tests[] = {
        cmocka_unit_test(test_encode_words_and_punctuation),
        cmocka_unit_test(test_encode_vocab_size),
        cmocka_unit_test(test_encode_longest_match_first),
        cmocka_unit_test(test_encode_unmatched_word_is_one_unk),
        cmocka_unit_test(test_encode_word_length_limit),
        cmocka_unit_test(test_encode_empty_text),
        cmocka_unit_test(test_encode_nul_bytes_are_dropped),
        cmocka_unit_test(test_encode_special_tokens_in_text),
        cmocka_unit_test(test_encode_accents_and_chinese),
        cmocka_unit_test(test_truncation_keeps_first_pieces),
        cmocka_unit_test(test_truncation_inside_a_word),
        cmocka_unit_test(test_truncation_flag_may_be_null),
        cmocka_unit_test(test_encode_null_arguments),
        cmocka_unit_test(test_encode_max_length_below_two),
        cmocka_unit_test(test_encode_invalid_utf8),
        cmocka_unit_test(test_load_missing_file),
        cmocka_unit_test(test_load_requires_special_tokens),
        cmocka_unit_test(test_load_empty_vocab),
        cmocka_unit_test(test_load_invalid_utf8_vocab),
        cmocka_unit_test(test_load_crlf_and_duplicates),
        cmocka_unit_test(test_load_null_arguments),
        cmocka_unit_test(test_destroy_accepts_null),
        cmocka_unit_test(test_megabyte_line_truncates),
        cmocka_unit_test(test_megabyte_line_costs_linear_time),
    };

    int failures = cmocka_run_group_tests_name("reference", reference_tests, NULL, NULL);
    failures += cmocka_run_group_tests_name("small vocab", small_vocab_tests,
                                            setup_small_vocab, teardown_small_vocab);
    return failures == 0 ? 0 : 1;
}
