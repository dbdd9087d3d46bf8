/* JSON parsing for the readers of config.json, safetensors headers and tuning files. */
#ifndef MCA_JSON_H
#define MCA_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include <cjson/cJSON.h>

/* Calls cJSON_ParseWithLengthOpts under a process-wide lock. cJSON 1.7.15 stores the
 * position of the last parse error in one global variable on every parse, even when
 * `parse_end` is given, so parses in several threads at once would race on it. The library
 * never reads that variable (cJSON_GetErrorPtr). */
cJSON *mca_json_parse(const char *text, size_t length, const char **parse_end,
                      bool require_null_terminated);

#endif /* MCA_JSON_H */
