/*
 * BERT WordPiece tokenizer for uncased models such as all-MiniLM-L6-v2.
 *
 * Encoding follows the pipeline of Hugging Face tokenizers' tokenizer.json for that model:
 * BertNormalizer (clean_text, handle_chinese_chars, strip_accents and lowercase all on),
 * BertPreTokenizer, and WordPiece with the "##" continuing prefix, "[UNK]" as the unknown
 * token and at most 100 characters per word. tests/test_tokenizer.c compares the ids with
 * those of tokenizers itself (tests/make_tokenizer_ids.py records the version).
 *
 * A tokenizer is immutable after loading, so several threads may encode with one
 * tokenizer at the same time.
 */
#ifndef MCA_TOKENIZER_H
#define MCA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct mca_tokenizer mca_tokenizer_t;

/*
 * Loads vocab.txt as BERT ships it: one UTF-8 token per line, and the id of a token is its
 * zero-based line number. A "\r" before the "\n" is dropped. If a token appears twice, the
 * later line's id wins, as in tokenizers' WordPiece::read_file.
 *
 * A vocab without [CLS], [SEP], [UNK] or [PAD], or with invalid UTF-8, gives
 * MCA_ERROR_CORRUPT_FILE, and an unreadable file gives MCA_ERROR_IO. On success
 * *tokenizer receives an owned tokenizer, released by mca_tokenizer_destroy.
 */
int mca_tokenizer_load(const char *vocab_path, mca_tokenizer_t **tokenizer);

/* Releases the tokenizer. Accepts NULL. */
void mca_tokenizer_destroy(mca_tokenizer_t *tokenizer);

/* Returns the number of lines of the vocab file, which is one more than the largest id,
 * or 0 for NULL. */
int mca_tokenizer_vocab_size(const mca_tokenizer_t *tokenizer);

/*
 * Encodes `length` bytes of UTF-8 text as [CLS] pieces... [SEP] and writes at most
 * max_length (>= 2) ids into ids[].
 *
 * text:      borrowed; need not be NUL-terminated. NUL bytes are control characters and
 *            are dropped, as all control characters are.
 * ids:       (max_length) int32, written on success.
 * count:     receives the number of ids written, 2 .. max_length.
 * truncated: may be NULL; receives 1 if pieces were dropped to fit max_length, else 0.
 *            Truncation keeps the first max_length - 2 pieces and then [SEP].
 *
 * Text that contains [CLS], [SEP], [UNK], [PAD] or [MASK] spelled exactly, in capitals,
 * encodes to that token's id, as tokenizers does for the model's special tokens.
 * Invalid UTF-8 (overlong forms, surrogates, code points above U+10FFFF, stray
 * continuation bytes, truncated sequences) gives MCA_ERROR_INVALID_TEXT with the byte
 * offset in the message.
 */
int mca_tokenizer_encode(const mca_tokenizer_t *tokenizer, const char *text, size_t length,
                         int max_length, int32_t *ids, int *count, int *truncated);

/* Checks that bytes[0 .. length) is UTF-8 as RFC 3629 defines it: no overlong forms, no
 * UTF-16 surrogates, nothing above U+10FFFF. On failure stores the offset of the first byte
 * of the invalid sequence and a phrase naming the problem. */
bool mca_utf8_validate(const unsigned char *bytes, size_t length, size_t *error_offset,
                       const char **reason);

#endif /* MCA_TOKENIZER_H */
