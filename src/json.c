/* JSON parsing serialized by a process-wide lock. */
#include "json.h"

#include <threads.h>

static mtx_t parse_lock;
static once_flag parse_lock_once = ONCE_FLAG_INIT;

static void parse_lock_init(void)
{
    mtx_init(&parse_lock, mtx_plain);
}

cJSON *mca_json_parse(const char *text, size_t length, const char **parse_end,
                      bool require_null_terminated)
{
    call_once(&parse_lock_once, parse_lock_init);
    mtx_lock(&parse_lock);
    cJSON *root = cJSON_ParseWithLengthOpts(text, length, parse_end, require_null_terminated);
    mtx_unlock(&parse_lock);
    return root;
}
