/*
 * BERT WordPiece tokenizer: vocab loading, an open-addressing table of tokens and a
 * streaming encoder.
 *
 * The encoder applies the steps of Hugging Face tokenizers' BertNormalizer,
 * BertPreTokenizer and WordPiece to one code point at a time, so a long text is never
 * copied and encoding stops as soon as max_length ids are known:
 *
 *   1. [CLS], [SEP], [UNK], [PAD] and [MASK] are matched in the raw text first.
 *   2. Clean text: U+0000, U+FFFD and control characters (categories Cc, Cf, Co and Cs,
 *      except \t, \n and \r) are dropped, and whitespace becomes a space.
 *   3. CJK ideographs get a space on each side.
 *   4. NFD, then nonspacing marks (category Mn) are dropped, which strips accents.
 *   5. Lowercase.
 *   6. Words are split on whitespace and on punctuation. Each punctuation character is
 *      a word of its own.
 *   7. WordPiece: each word is split greedily into the longest vocab entries, with "##"
 *      before every piece but the first. A word of more than 100 characters, or one with a
 *      part that matches no entry, becomes a single [UNK].
 *
 * NOTE: tokenizers (0.23.3 tested) takes character categories from tables of Unicode 8.0
 * (the unicode_categories crate), while utf8proc 2.8 follows Unicode 15.0. Code points
 * assigned to Cf, Mn or P* after Unicode 8.0 (U+08E2, U+0D81 and U+2E4F, for example)
 * are dropped or split off here but stay inside their word in tokenizers. The few whose
 * category changed since then differ too: tokenizers splits off U+166D, which was Po in
 * Unicode 8.0 and is So now. Words that contain such code points encode differently.
 */
#include "tokenizer.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "error.h"
#include "fault.h"

/* WordPiece settings of all-MiniLM-L6-v2's tokenizer.json. */
#define MAX_WORD_CHARS 100
#define CONTINUING_PREFIX "##"
#define CONTINUING_PREFIX_LENGTH 2

/* A code point is at most 4 bytes of UTF-8. */
#define MAX_WORD_BYTES (4 * MAX_WORD_CHARS)

/* Canonical decompositions have at most 4 code points in Unicode 15.0 (U+1F82 has 4). The
 * margin costs nothing. */
#define MAX_DECOMPOSITION 32

/* Combining runs up to this length are sorted by insertion, longer ones by counting. */
#define INSERTION_SORT_MAX 16

typedef struct vocab_slot {
    const char *token; /* points into mca_tokenizer.contents; NULL marks an empty slot */
    size_t length;
    int32_t id;
} vocab_slot_t;

/* A special token matched in raw text before normalization. */
typedef struct special_token {
    const char *text;
    size_t length;
    int32_t id; /* -1 if the vocab lacks it */
} special_token_t;

enum { SPECIAL_CLS, SPECIAL_SEP, SPECIAL_UNK, SPECIAL_PAD, SPECIAL_MASK, SPECIAL_COUNT };

struct mca_tokenizer {
    char *contents;        /* the vocab file; tokens point into it */
    vocab_slot_t *slots;   /* open addressing with linear probing */
    size_t slot_mask;      /* slot count - 1; the slot count is a power of two */
    int vocab_size;        /* lines of the vocab file */
    size_t max_token_bytes; /* length of the longest entry; longer candidates skip the lookup */
    special_token_t special[SPECIAL_COUNT];
};

/* ------------------------------------------------------------------------------------ */
/* UTF-8                                                                                 */
/* ------------------------------------------------------------------------------------ */

bool mca_utf8_validate(const unsigned char *bytes, size_t length, size_t *error_offset,
                       const char **reason)
{
    size_t i = 0;
    while (i < length) {
        unsigned char lead = bytes[i];
        size_t sequence_length;
        uint32_t code_point;

        if (lead < 0x80) {
            i++;
            continue;
        }
        if (lead < 0xC0) {
            *reason = "a continuation byte without a lead byte";
            *error_offset = i;
            return false;
        }
        if (lead < 0xE0) {
            sequence_length = 2;
            code_point = lead & 0x1Fu;
        } else if (lead < 0xF0) {
            sequence_length = 3;
            code_point = lead & 0x0Fu;
        } else if (lead < 0xF8) {
            sequence_length = 4;
            code_point = lead & 0x07u;
        } else {
            *reason = "a byte that never occurs in UTF-8";
            *error_offset = i;
            return false;
        }

        for (size_t k = 1; k < sequence_length; k++) {
            if (i + k >= length || (bytes[i + k] & 0xC0u) != 0x80u) {
                *reason = "a truncated multi-byte sequence";
                *error_offset = i;
                return false;
            }
            code_point = (code_point << 6) | (bytes[i + k] & 0x3Fu);
        }

        static const uint32_t min_code_point[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (code_point < min_code_point[sequence_length]) {
            *reason = "an overlong encoding";
            *error_offset = i;
            return false;
        }
        if (code_point >= 0xD800 && code_point <= 0xDFFF) {
            *reason = "an encoded UTF-16 surrogate";
            *error_offset = i;
            return false;
        }
        if (code_point > 0x10FFFF) {
            *reason = "a code point above U+10FFFF";
            *error_offset = i;
            return false;
        }
        i += sequence_length;
    }
    return true;
}

/* Decodes the code point at *position of text that mca_utf8_validate accepted and advances
 * *position past it. */
static uint32_t utf8_decode(const unsigned char *bytes, size_t *position)
{
    size_t i = *position;
    unsigned char lead = bytes[i];

    if (lead < 0x80) {
        *position = i + 1;
        return lead;
    }
    if (lead < 0xE0) {
        *position = i + 2;
        return ((uint32_t)(lead & 0x1F) << 6) | (bytes[i + 1] & 0x3Fu);
    }
    if (lead < 0xF0) {
        *position = i + 3;
        return ((uint32_t)(lead & 0x0F) << 12) | ((uint32_t)(bytes[i + 1] & 0x3F) << 6) |
               (bytes[i + 2] & 0x3Fu);
    }
    *position = i + 4;
    return ((uint32_t)(lead & 0x07) << 18) | ((uint32_t)(bytes[i + 1] & 0x3F) << 12) |
           ((uint32_t)(bytes[i + 2] & 0x3F) << 6) | (bytes[i + 3] & 0x3Fu);
}

/* ------------------------------------------------------------------------------------ */
/* Vocab table                                                                           */
/* ------------------------------------------------------------------------------------ */

/* 64-bit FNV-1a, fed in parts so that "##" + piece is hashed without building it. */
#define FNV_OFFSET_BASIS UINT64_C(14695981039346656037)
#define FNV_PRIME UINT64_C(1099511628211)

static uint64_t hash_update(uint64_t hash, const char *bytes, size_t length)
{
    for (size_t i = 0; i < length; i++) {
        hash ^= (unsigned char)bytes[i];
        hash *= FNV_PRIME;
    }
    return hash;
}

/* Returns the id of prefix + bytes, or -1 if the vocab has no such entry. */
static int32_t vocab_find(const mca_tokenizer_t *tokenizer, const char *prefix,
                          size_t prefix_length, const char *bytes, size_t length)
{
    uint64_t hash = hash_update(hash_update(FNV_OFFSET_BASIS, prefix, prefix_length), bytes,
                                length);
    size_t total_length = prefix_length + length;

    for (size_t slot = (size_t)hash & tokenizer->slot_mask;;
         slot = (slot + 1) & tokenizer->slot_mask) {
        const vocab_slot_t *entry = &tokenizer->slots[slot];
        if (entry->token == NULL)
            return -1;
        if (entry->length == total_length &&
            memcmp(entry->token, prefix, prefix_length) == 0 &&
            memcmp(entry->token + prefix_length, bytes, length) == 0)
            return entry->id;
    }
}

/* Adds a token, or gives an existing one the new id. The table must have a free slot. */
static void vocab_insert(mca_tokenizer_t *tokenizer, const char *token, size_t length,
                         int32_t id)
{
    uint64_t hash = hash_update(FNV_OFFSET_BASIS, token, length);

    for (size_t slot = (size_t)hash & tokenizer->slot_mask;;
         slot = (slot + 1) & tokenizer->slot_mask) {
        vocab_slot_t *entry = &tokenizer->slots[slot];
        if (entry->token == NULL) {
            entry->token = token;
            entry->length = length;
            entry->id = id;
            return;
        }
        if (entry->length == length && memcmp(entry->token, token, length) == 0) {
            entry->id = id;
            return;
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* Loading                                                                               */
/* ------------------------------------------------------------------------------------ */

/* Reads the whole file into a new buffer with a NUL after the last byte. */
static int read_file(const char *path, char **contents, size_t *size)
{
    /* strerror_r, because strerror need not be thread-safe. */
    char reason[256];
    FILE *file = fopen(path, "rb");
    if (file == NULL) {
        int error_number = errno;
        if (strerror_r(error_number, reason, sizeof reason) != 0)
            snprintf(reason, sizeof reason, "error %d", error_number);
        return mca_error(MCA_ERROR_IO, "cannot open vocab file %s: %s; pass the path of the "
                         "model's vocab.txt", path, reason);
    }

    size_t capacity = 1 << 16;
    size_t used = 0;
    char *buffer = mca_malloc(capacity);
    int status = MCA_SUCCESS;
    if (buffer == NULL) {
        status = mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                           "cannot allocate %zu bytes to read vocab file %s", capacity, path);
        goto cleanup;
    }

    for (;;) {
        if (capacity - used < 2) {
            if (capacity > SIZE_MAX / 2) {
                status = mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                                   "vocab file %s is larger than memory can hold", path);
                goto cleanup;
            }
            char *grown = mca_realloc(buffer, capacity * 2);
            if (grown == NULL) {
                status = mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                                   "cannot allocate %zu bytes to read vocab file %s",
                                   capacity * 2, path);
                goto cleanup;
            }
            buffer = grown;
            capacity *= 2;
        }
        size_t got = fread(buffer + used, 1, capacity - used - 1, file);
        used += got;
        if (got == 0)
            break;
    }
    if (ferror(file)) {
        int error_number = errno;
        if (strerror_r(error_number, reason, sizeof reason) != 0)
            snprintf(reason, sizeof reason, "error %d", error_number);
        status = mca_error(MCA_ERROR_IO, "cannot read vocab file %s: %s; check that it is a "
                           "readable file", path, reason);
        goto cleanup;
    }

    buffer[used] = '\0';
    *contents = buffer;
    *size = used;
    buffer = NULL;

cleanup:
    free(buffer);
    fclose(file);
    return status;
}

static size_t count_lines(const char *contents, size_t size)
{
    size_t lines = 0;
    const char *end = contents + size;
    for (const char *line = contents; line < end;) {
        const char *newline = memchr(line, '\n', (size_t)(end - line));
        lines++;
        line = newline != NULL ? newline + 1 : end;
    }
    return lines;
}

/* Inserts every line of the vocab file with its zero-based line number as the id. */
static int parse_vocab(mca_tokenizer_t *tokenizer, const char *path, size_t size)
{
    char *end = tokenizer->contents + size;
    int32_t id = 0;

    for (char *line = tokenizer->contents; line < end; id++) {
        char *newline = memchr(line, '\n', (size_t)(end - line));
        char *line_end = newline != NULL ? newline : end;
        size_t length = (size_t)(line_end - line);
        if (length > 0 && line[length - 1] == '\r')
            length--;

        size_t error_offset;
        const char *reason;
        if (!mca_utf8_validate((const unsigned char *)line, length, &error_offset, &reason))
            return mca_error(MCA_ERROR_CORRUPT_FILE,
                             "line %ld of vocab file %s is not valid UTF-8: %s at byte %zu "
                             "of the line; use the model's original vocab.txt",
                             (long)id + 1, path, reason, error_offset);

        vocab_insert(tokenizer, line, length, id);
        if (length > tokenizer->max_token_bytes)
            tokenizer->max_token_bytes = length;
        line = line_end + (newline != NULL ? 1 : 0);
    }
    return MCA_SUCCESS;
}

/* Looks up the special tokens. All but [MASK] are required. */
static int find_special_tokens(mca_tokenizer_t *tokenizer, const char *path)
{
    static const char *const names[SPECIAL_COUNT] = {"[CLS]", "[SEP]", "[UNK]", "[PAD]",
                                                     "[MASK]"};

    for (int i = 0; i < SPECIAL_COUNT; i++) {
        special_token_t *special = &tokenizer->special[i];
        special->text = names[i];
        special->length = strlen(names[i]);
        special->id = vocab_find(tokenizer, "", 0, special->text, special->length);
        if (special->id < 0 && i != SPECIAL_MASK)
            return mca_error(MCA_ERROR_CORRUPT_FILE,
                             "vocab file %s has no %s line; a BERT vocab.txt needs [CLS], "
                             "[SEP], [UNK] and [PAD], so check that this is the model's "
                             "vocab.txt", path, names[i]);
    }
    return MCA_SUCCESS;
}

int mca_tokenizer_load(const char *vocab_path, mca_tokenizer_t **tokenizer)
{
    if (vocab_path == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "vocab_path is NULL; pass the path of the model's vocab.txt");
    if (tokenizer == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "tokenizer is NULL; pass the address of an mca_tokenizer_t pointer");

    mca_tokenizer_t *result = mca_calloc(1, sizeof *result);
    if (result == NULL)
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY, "cannot allocate a tokenizer");

    size_t size = 0;
    int status = read_file(vocab_path, &result->contents, &size);
    if (status != MCA_SUCCESS)
        goto cleanup;

    size_t lines = count_lines(result->contents, size);
    if (lines > INT32_MAX) {
        status = mca_error(MCA_ERROR_CORRUPT_FILE,
                           "vocab file %s has %zu lines, more than int32 ids can number; "
                           "use the model's original vocab.txt", vocab_path, lines);
        goto cleanup;
    }

    /* Keep the load factor at most 1/2 so that probe sequences stay short. */
    size_t slot_count = 16;
    while (slot_count < 2 * lines)
        slot_count *= 2;
    result->slots = mca_calloc(slot_count, sizeof *result->slots);
    if (result->slots == NULL) {
        status = mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                           "cannot allocate a table of %zu slots for vocab file %s",
                           slot_count, vocab_path);
        goto cleanup;
    }
    result->slot_mask = slot_count - 1;
    result->vocab_size = (int)lines;

    status = parse_vocab(result, vocab_path, size);
    if (status != MCA_SUCCESS)
        goto cleanup;
    status = find_special_tokens(result, vocab_path);
    if (status != MCA_SUCCESS)
        goto cleanup;

    *tokenizer = result;
    result = NULL;

cleanup:
    mca_tokenizer_destroy(result);
    return status;
}

void mca_tokenizer_destroy(mca_tokenizer_t *tokenizer)
{
    if (tokenizer == NULL)
        return;
    free(tokenizer->slots);
    free(tokenizer->contents);
    free(tokenizer);
}

int mca_tokenizer_vocab_size(const mca_tokenizer_t *tokenizer)
{
    return tokenizer != NULL ? tokenizer->vocab_size : 0;
}

/* ------------------------------------------------------------------------------------ */
/* Character classes of BertNormalizer and BertPreTokenizer                              */
/* ------------------------------------------------------------------------------------ */

/* \t, \n and \r count as whitespace, not as control characters. */
static bool is_control(uint32_t c)
{
    if (c == '\t' || c == '\n' || c == '\r')
        return false;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_CC:
    case UTF8PROC_CATEGORY_CF:
    case UTF8PROC_CATEGORY_CO:
    case UTF8PROC_CATEGORY_CS:
        return true;
    default:
        return false;
    }
}

/* Rust's char::is_whitespace, which tokenizers uses: the White_Space property, which is
 * categories Zs, Zl and Zp plus U+0009..U+000D and U+0085. */
static bool is_whitespace(uint32_t c)
{
    if ((c >= 0x09 && c <= 0x0D) || c == 0x85)
        return true;
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_ZS:
    case UTF8PROC_CATEGORY_ZL:
    case UTF8PROC_CATEGORY_ZP:
        return true;
    default:
        return false;
    }
}

/* The ranges of tokenizers' BertNormalizer. Unlike Google's original BERT code they leave
 * out U+2B820..U+2B91F. */
static bool is_chinese_char(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* All ASCII symbols count as punctuation, "$", "+" and "^" included, as do categories
 * Pc, Pd, Ps, Pe, Pi, Pf and Po. */
static bool is_punctuation(uint32_t c)
{
    if (c < 0x80)
        return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
               (c >= 123 && c <= 126);
    switch (utf8proc_category((utf8proc_int32_t)c)) {
    case UTF8PROC_CATEGORY_PC:
    case UTF8PROC_CATEGORY_PD:
    case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI:
    case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO:
        return true;
    default:
        return false;
    }
}

/* ------------------------------------------------------------------------------------ */
/* Encoder                                                                               */
/* ------------------------------------------------------------------------------------ */

typedef struct encoder {
    const mca_tokenizer_t *tokenizer;

    /* Pieces between [CLS] and [SEP], at most `piece_limit` of them. */
    int32_t *pieces;
    size_t piece_count;
    size_t piece_capacity;
    size_t piece_limit;
    bool truncated; /* a piece was dropped; encoding stops */

    /* Combining characters (canonical combining class > 0) after the last starter, kept
     * until the next starter so that they can be put in canonical order as NFD requires.
     * Nonspacing marks are dropped before they get here, which leaves the order of the
     * others unchanged because the sort is stable. */
    uint32_t *run;
    uint32_t *run_sorted;
    size_t run_count;
    size_t run_capacity;

    /* The word being collected. Only the first MAX_WORD_CHARS characters are stored,
     * because a longer word becomes [UNK] whatever its content. */
    char word[MAX_WORD_BYTES];
    size_t word_offsets[MAX_WORD_CHARS + 1]; /* byte offset of each character, then the end */
    size_t word_chars;                       /* characters seen, stored or not */
} encoder_t;

static int push_piece(encoder_t *encoder, int32_t id)
{
    if (encoder->piece_count == encoder->piece_limit) {
        encoder->truncated = true;
        return MCA_SUCCESS;
    }
    if (encoder->piece_count == encoder->piece_capacity) {
        size_t capacity = encoder->piece_capacity == 0 ? 64 : encoder->piece_capacity * 2;
        if (capacity > encoder->piece_limit)
            capacity = encoder->piece_limit;
        if (capacity > SIZE_MAX / sizeof *encoder->pieces)
            return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                             "cannot allocate %zu token ids", capacity);
        int32_t *grown = mca_realloc(encoder->pieces, capacity * sizeof *grown);
        if (grown == NULL)
            return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                             "cannot allocate %zu token ids", capacity);
        encoder->pieces = grown;
        encoder->piece_capacity = capacity;
    }
    encoder->pieces[encoder->piece_count++] = id;
    return MCA_SUCCESS;
}

/* Splits the current word into WordPiece pieces and pushes them, or [UNK] for the whole
 * word if it is too long or some part of it matches no vocab entry. */
static int finish_word(encoder_t *encoder)
{
    const mca_tokenizer_t *tokenizer = encoder->tokenizer;
    size_t chars = encoder->word_chars;
    int32_t unk_id = tokenizer->special[SPECIAL_UNK].id;

    if (chars == 0)
        return MCA_SUCCESS;
    encoder->word_chars = 0;
    if (chars > MAX_WORD_CHARS)
        return push_piece(encoder, unk_id);

    /* Every piece has at least one character, so a word has at most `chars` pieces. */
    int32_t word_pieces[MAX_WORD_CHARS];
    size_t word_piece_count = 0;
    const size_t *offsets = encoder->word_offsets;

    for (size_t start = 0; start < chars;) {
        const char *prefix = start > 0 ? CONTINUING_PREFIX : "";
        size_t prefix_length = start > 0 ? CONTINUING_PREFIX_LENGTH : 0;
        int32_t id = -1;
        size_t end = chars;

        /* Try the longest candidate first; those longer than every entry cannot match. */
        for (; end > start; end--) {
            size_t length = offsets[end] - offsets[start];
            if (prefix_length + length > tokenizer->max_token_bytes)
                continue;
            id = vocab_find(tokenizer, prefix, prefix_length, encoder->word + offsets[start],
                            length);
            if (id >= 0)
                break;
        }
        if (id < 0)
            return push_piece(encoder, unk_id);
        word_pieces[word_piece_count++] = id;
        start = end;
    }

    for (size_t i = 0; i < word_piece_count && !encoder->truncated; i++) {
        int status = push_piece(encoder, word_pieces[i]);
        if (status != MCA_SUCCESS)
            return status;
    }
    return MCA_SUCCESS;
}

static void append_to_word(encoder_t *encoder, uint32_t c)
{
    size_t chars = encoder->word_chars++;
    if (chars >= MAX_WORD_CHARS)
        return;

    size_t offset = chars == 0 ? 0 : encoder->word_offsets[chars];
    if (chars == 0)
        encoder->word_offsets[0] = 0;
    utf8proc_ssize_t written =
        utf8proc_encode_char((utf8proc_int32_t)c, (utf8proc_uint8_t *)encoder->word + offset);
    encoder->word_offsets[chars + 1] = offset + (size_t)written;
}

/* Lowercases a normalized code point and feeds it to the pre-tokenizer. */
static int emit_normalized(encoder_t *encoder, uint32_t c)
{
    /* Simple lowercase mapping. The only code point whose full lowercase has more than
     * one code point, U+0130, never gets here because NFD has split it into "I" and a
     * nonspacing mark. */
    c = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);

    if (is_whitespace(c))
        return finish_word(encoder);
    if (is_punctuation(c)) {
        int status = finish_word(encoder);
        if (status != MCA_SUCCESS || encoder->truncated)
            return status;
        append_to_word(encoder, c);
        return finish_word(encoder);
    }
    append_to_word(encoder, c);
    return MCA_SUCCESS;
}

/* Puts the combining run in canonical order (stable by combining class) and emits it. */
static int flush_run(encoder_t *encoder)
{
    size_t count = encoder->run_count;
    uint32_t *run = encoder->run;
    encoder->run_count = 0;

    if (count <= INSERTION_SORT_MAX) {
        for (size_t i = 1; i < count; i++) {
            uint32_t c = run[i];
            int c_class = utf8proc_get_property((utf8proc_int32_t)c)->combining_class;
            size_t j = i;
            while (j > 0 &&
                   utf8proc_get_property((utf8proc_int32_t)run[j - 1])->combining_class >
                       c_class) {
                run[j] = run[j - 1];
                j--;
            }
            run[j] = c;
        }
    } else {
        /* Counting sort, so that a long run costs linear time. */
        size_t starts[257] = {0};
        for (size_t i = 0; i < count; i++)
            starts[utf8proc_get_property((utf8proc_int32_t)run[i])->combining_class + 1]++;
        for (int k = 1; k <= 256; k++)
            starts[k] += starts[k - 1];
        for (size_t i = 0; i < count; i++)
            encoder->run_sorted[starts[utf8proc_get_property(
                (utf8proc_int32_t)run[i])->combining_class]++] = run[i];
        run = encoder->run_sorted;
    }

    for (size_t i = 0; i < count && !encoder->truncated; i++) {
        int status = emit_normalized(encoder, run[i]);
        if (status != MCA_SUCCESS)
            return status;
    }
    return MCA_SUCCESS;
}

static int append_to_run(encoder_t *encoder, uint32_t c)
{
    if (encoder->run_count == encoder->run_capacity) {
        size_t capacity = encoder->run_capacity == 0 ? 16 : encoder->run_capacity * 2;
        if (capacity > SIZE_MAX / sizeof(uint32_t))
            return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                             "cannot allocate a run of %zu combining characters", capacity);
        uint32_t *grown_run = mca_realloc(encoder->run, capacity * sizeof(uint32_t));
        if (grown_run == NULL)
            return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                             "cannot allocate a run of %zu combining characters", capacity);
        encoder->run = grown_run;
        uint32_t *grown_sorted = mca_realloc(encoder->run_sorted, capacity * sizeof(uint32_t));
        if (grown_sorted == NULL)
            return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY,
                             "cannot allocate a run of %zu combining characters", capacity);
        encoder->run_sorted = grown_sorted;
        encoder->run_capacity = capacity;
    }
    encoder->run[encoder->run_count++] = c;
    return MCA_SUCCESS;
}

/* Decomposes a cleaned code point (NFD) and drops nonspacing marks. */
static int decompose(encoder_t *encoder, uint32_t c)
{
    utf8proc_int32_t parts[MAX_DECOMPOSITION];
    int boundary_class = 0;
    utf8proc_ssize_t part_count = utf8proc_decompose_char(
        (utf8proc_int32_t)c, parts, MAX_DECOMPOSITION, UTF8PROC_DECOMPOSE, &boundary_class);
    if (part_count < 0 || part_count > MAX_DECOMPOSITION)
        return mca_error(MCA_ERROR_NOT_IMPLEMENTED,
                         "utf8proc returned %ld code points for the decomposition of U+%04lX, "
                         "outside 0 .. %d; the tokenizer needs a larger MAX_DECOMPOSITION",
                         (long)part_count, (unsigned long)c, MAX_DECOMPOSITION);

    for (utf8proc_ssize_t i = 0; i < part_count && !encoder->truncated; i++) {
        const utf8proc_property_t *property = utf8proc_get_property(parts[i]);
        bool nonspacing_mark = property->category == UTF8PROC_CATEGORY_MN;
        int status;

        if (property->combining_class != 0) {
            status = nonspacing_mark ? MCA_SUCCESS : append_to_run(encoder, (uint32_t)parts[i]);
        } else {
            status = flush_run(encoder);
            if (status == MCA_SUCCESS && !nonspacing_mark && !encoder->truncated)
                status = emit_normalized(encoder, (uint32_t)parts[i]);
        }
        if (status != MCA_SUCCESS)
            return status;
    }
    return MCA_SUCCESS;
}

/* Applies clean_text and handle_chinese_chars to one code point of the raw text. */
static int encode_code_point(encoder_t *encoder, uint32_t c)
{
    if (c == 0 || c == 0xFFFD || is_control(c))
        return MCA_SUCCESS;
    if (is_whitespace(c))
        return decompose(encoder, ' ');
    if (!is_chinese_char(c))
        return decompose(encoder, c);

    int status = decompose(encoder, ' ');
    if (status == MCA_SUCCESS)
        status = decompose(encoder, c);
    if (status == MCA_SUCCESS)
        status = decompose(encoder, ' ');
    return status;
}

/* Ends the current text segment: flushes the combining run and the last word. */
static int finish_segment(encoder_t *encoder)
{
    int status = flush_run(encoder);
    if (status == MCA_SUCCESS && !encoder->truncated)
        status = finish_word(encoder);
    return status;
}

/* Returns the special token that starts at text[position], or NULL. */
static const special_token_t *match_special(const mca_tokenizer_t *tokenizer,
                                            const char *text, size_t length, size_t position)
{
    for (int i = 0; i < SPECIAL_COUNT; i++) {
        const special_token_t *special = &tokenizer->special[i];
        if (special->id >= 0 && length - position >= special->length &&
            memcmp(text + position, special->text, special->length) == 0)
            return special;
    }
    return NULL;
}

/* Runs the pipeline over the whole text, stopping early once a piece is dropped. */
static int encode_text(encoder_t *encoder, const char *text, size_t length)
{
    const unsigned char *bytes = (const unsigned char *)text;
    size_t position = 0;

    while (position < length && !encoder->truncated) {
        int status;
        const special_token_t *special = NULL;
        if (bytes[position] == '[')
            special = match_special(encoder->tokenizer, text, length, position);

        if (special != NULL) {
            /* Special tokens split the text before normalization, so each side is a
             * segment of its own. */
            status = finish_segment(encoder);
            if (status == MCA_SUCCESS && !encoder->truncated)
                status = push_piece(encoder, special->id);
            position += special->length;
        } else {
            status = encode_code_point(encoder, utf8_decode(bytes, &position));
        }
        if (status != MCA_SUCCESS)
            return status;
    }
    if (encoder->truncated)
        return MCA_SUCCESS;
    return finish_segment(encoder);
}

int mca_tokenizer_encode(const mca_tokenizer_t *tokenizer, const char *text, size_t length,
                         int max_length, int32_t *ids, int *count, int *truncated)
{
    if (tokenizer == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "tokenizer is NULL; load one with mca_tokenizer_load");
    if (text == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "text is NULL; pass a buffer of `length` bytes, \"\" for no text");
    if (max_length < 2)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "max_length is %d; it must be at least 2 to hold [CLS] and [SEP]",
                         max_length);
    if (ids == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "ids is NULL; pass an array of max_length (%d) int32 values",
                         max_length);
    if (count == NULL)
        return mca_error(MCA_ERROR_INVALID_ARGUMENT,
                         "count is NULL; pass the address of an int for the id count");

    size_t error_offset;
    const char *reason;
    if (!mca_utf8_validate((const unsigned char *)text, length, &error_offset, &reason))
        return mca_error(MCA_ERROR_INVALID_TEXT,
                         "text is not valid UTF-8: %s at byte offset %zu (byte 0x%02X); "
                         "convert the text to UTF-8 before encoding it",
                         reason, error_offset, (unsigned)(unsigned char)text[error_offset]);

    encoder_t *encoder = mca_calloc(1, sizeof *encoder);
    if (encoder == NULL)
        return mca_error(MCA_ERROR_OUT_OF_HOST_MEMORY, "cannot allocate the encoder state");
    encoder->tokenizer = tokenizer;
    encoder->piece_limit = (size_t)max_length - 2;

    /* Collect the pieces apart from ids[] so that nothing is written on failure. */
    int status = encode_text(encoder, text, length);
    if (status == MCA_SUCCESS) {
        ids[0] = tokenizer->special[SPECIAL_CLS].id;
        if (encoder->piece_count > 0)
            memcpy(ids + 1, encoder->pieces, encoder->piece_count * sizeof *ids);
        ids[encoder->piece_count + 1] = tokenizer->special[SPECIAL_SEP].id;
        *count = (int)encoder->piece_count + 2;
        if (truncated != NULL)
            *truncated = encoder->truncated ? 1 : 0;
    }

    free(encoder->pieces);
    free(encoder->run);
    free(encoder->run_sorted);
    free(encoder);
    return status;
}
