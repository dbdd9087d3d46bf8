#!/usr/bin/env bash
# Tests mca-embed on bad input: empty and blank files, a missing input, invalid UTF-8, NUL
# bytes, and lines over the model's 512 positions or of one megabyte. It also tests output
# paths that cannot be written, and runs that fail or are killed before their --output file
# is complete.
#
# Usage: tests/test_cli.sh MCA_EMBED SIGNAL_MODULE
#
#   MCA_EMBED      the mca-embed program to test
#   SIGNAL_MODULE  the LD_PRELOAD module built from tests/signal_at_fsync.c
#
# The checks that fail before the model loads run first and always. The rest load the
# model from $MCA_MODEL_DIR and are skipped (exit 77) when it is missing. Prints one line
# per check and exits 1 when any check fails.
set -uo pipefail

if (($# != 2)); then
    echo "usage: $0 MCA_EMBED SIGNAL_MODULE" >&2
    exit 2
fi
embed=$1
signal_module=$2
model_dir=${MCA_MODEL_DIR:-}

work=$(mktemp -d "${TMPDIR:-/tmp}/mca-test-cli.XXXXXX")
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
# Readable by all, for the check that runs as the user nobody.
chmod 755 "$work"

failures=0
fail() {
    printf 'FAIL %s\n' "$*"
    failures=$((failures + 1))
}
pass() {
    printf 'ok   %s\n' "$*"
}

# Runs mca-embed with the given arguments. Its standard output and error go to
# $work/NAME.out and $work/NAME.err, and its exit status to $status.
run_embed() {
    local name=$1
    shift
    "$embed" "$@" >"$work/$name.out" 2>"$work/$name.err"
    status=$?
}

# Checks that run NAME exited with STATUS, printed a line containing MESSAGE to standard
# error and nothing to standard output.
check_error() {
    local name=$1 expected_status=$2 message=$3
    if [[ $status != "$expected_status" ]]; then
        fail "$name: exit status $status, expected $expected_status; standard error: $(head -c 600 "$work/$name.err")"
    elif ! grep -qF -- "$message" "$work/$name.err"; then
        fail "$name: standard error lacks \"$message\"; it is: $(head -c 600 "$work/$name.err")"
    elif [[ -s $work/$name.out ]]; then
        fail "$name: printed to standard output: $(head -c 200 "$work/$name.out")"
    else
        pass "$name"
    fi
}

# Checks that directory DIR contains no temporary output file (*.tmp.XXXXXX).
check_no_temporary() {
    local name=$1 dir=$2 stray
    stray=$(find "$dir" -maxdepth 1 -name '*.tmp.*' -print)
    if [[ -n $stray ]]; then
        fail "$name: left temporary files: $stray"
    else
        pass "$name: no temporary file"
    fi
}

# ------------------------------------------------------------------------------------------
# Checks that fail before the model loads. --model names a directory that does not exist,
# so a check that got past its intended error would fail on the model instead.
# ------------------------------------------------------------------------------------------

no_model=(--model "$work/no-model")
printf 'A good sentence.\n' >"$work/good.txt"

: >"$work/empty.txt"
run_embed empty "${no_model[@]}" "$work/empty.txt"
check_error empty 1 "$work/empty.txt contains no sentences (blank lines are ignored)"

printf '\n   \n\t\r\n\r\n' >"$work/blank.txt"
run_embed blank-lines "${no_model[@]}" "$work/blank.txt"
check_error blank-lines 1 "$work/blank.txt contains no sentences (blank lines are ignored)"

run_embed empty-stdin "${no_model[@]}" - </dev/null
check_error empty-stdin 1 "standard input contains no sentences"

run_embed missing-input "${no_model[@]}" "$work/missing.txt"
check_error missing-input 1 "opening input file \"$work/missing.txt\" failed: No such file or directory"

mkdir "$work/a-directory"
run_embed input-directory "${no_model[@]}" "$work/a-directory"
check_error input-directory 1 "reading $work/a-directory failed: Is a directory"

# Invalid UTF-8 on line 2, after a valid line: name, bytes of line 2 (printf escapes),
# expected message.
invalid_utf8_cases=(
    'byte-ff' 'bad \xff here' 'line 2 of FILE is not valid UTF-8: a byte that never occurs in UTF-8 at byte offset 4 (byte 0xFF)'
    'lone-continuation' 'x\x80' 'a continuation byte without a lead byte at byte offset 1 (byte 0x80)'
    'overlong' '\xc0\xaf' 'an overlong encoding at byte offset 0 (byte 0xC0)'
    'surrogate' 'a\xed\xa0\x80' 'an encoded UTF-16 surrogate at byte offset 1 (byte 0xED)'
    'above-10ffff' '\xf4\x90\x80\x80' 'a code point above U+10FFFF at byte offset 0 (byte 0xF4)'
    'truncated-at-line-end' 'euro \xe2\x82' 'a truncated multi-byte sequence at byte offset 5 (byte 0xE2)'
    'latin-1' 'caf\xe9' 'a truncated multi-byte sequence at byte offset 3 (byte 0xE9)'
)
for ((i = 0; i < ${#invalid_utf8_cases[@]}; i += 3)); do
    name=invalid-utf8-${invalid_utf8_cases[i]}
    file=$work/$name.txt
    printf "A good sentence.\n${invalid_utf8_cases[i + 1]}\nAnother one.\n" >"$file"
    run_embed "$name" "${no_model[@]}" "$file"
    check_error "$name" 1 "${invalid_utf8_cases[i + 2]/FILE/$file}"
done

printf 'A good sentence.\nbefore\0after\n' >"$work/nul.txt"
run_embed nul-byte "${no_model[@]}" "$work/nul.txt"
check_error nul-byte 1 "line 2 of $work/nul.txt contains a NUL byte at byte offset 6"

# "hi" in UTF-16LE with a byte order mark.
printf '\xff\xfeh\0i\0\n\0' >"$work/utf16.txt"
run_embed utf-16 "${no_model[@]}" "$work/utf16.txt"
check_error utf-16 1 "line 1 of $work/utf16.txt contains a NUL byte at byte offset 3; remove it, or convert the file to UTF-8 if it is UTF-16"

# Output paths that cannot be written fail before the model loads.
run_embed output-missing-directory "${no_model[@]}" --output "$work/no-such-dir/e.npy" "$work/good.txt"
check_error output-missing-directory 1 "cannot write --output $work/no-such-dir/e.npy: creating a file in directory $work/no-such-dir failed: No such file or directory"

run_embed output-below-file "${no_model[@]}" --output "$work/good.txt/e.npy" "$work/good.txt"
check_error output-below-file 1 "creating a file in directory $work/good.txt failed: Not a directory"

run_embed output-is-directory "${no_model[@]}" --output "$work/a-directory" "$work/good.txt"
check_error output-is-directory 1 "cannot write --output $work/a-directory: it is a directory"
check_no_temporary output-is-directory "$work"

ln -s "$work/good.txt" "$work/a-link.npy"
run_embed output-is-symlink "${no_model[@]}" --output "$work/a-link.npy" "$work/good.txt"
check_error output-is-symlink 1 "cannot write --output $work/a-link.npy: it exists and is not a regular file"
[[ -L $work/a-link.npy ]] || fail "output-is-symlink: the symbolic link was replaced"

mkfifo "$work/a-pipe.npy"
run_embed output-is-pipe "${no_model[@]}" --output "$work/a-pipe.npy" "$work/good.txt"
check_error output-is-pipe 1 "cannot write --output $work/a-pipe.npy: it exists and is not a regular file"
[[ -p $work/a-pipe.npy ]] || fail "output-is-pipe: the pipe was replaced"

run_embed output-empty "${no_model[@]}" --output= "$work/good.txt"
check_error output-empty 2 "invalid value for --output: \"\"; expected a file path"

# Root may write to any directory, so as root this check runs as the user nobody. It fails
# before the model loads, so that user needs no access to the model or the PoCL cache.
mkdir "$work/read-only"
chmod 555 "$work/read-only"
as_other_user=()
if ((EUID == 0)) && command -v setpriv >/dev/null; then
    as_other_user=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
fi
if ((EUID != 0)) || ((${#as_other_user[@]} > 0)); then
    "${as_other_user[@]}" "$embed" "${no_model[@]}" --output "$work/read-only/e.npy" "$work/good.txt" \
        >"$work/output-read-only.out" 2>"$work/output-read-only.err"
    status=$?
    check_error output-read-only 1 "creating a file in directory $work/read-only failed: Permission denied"
else
    pass "output-read-only: skipped, because root without setpriv can write anywhere"
fi

# A bad line after good ones leaves an existing output file as it was.
printf 'old content\n' >"$work/kept.npy"
printf 'A good sentence.\nAnother one.\nbad \xff\n' >"$work/bad-last-line.txt"
run_embed bad-last-line "${no_model[@]}" --output "$work/kept.npy" "$work/bad-last-line.txt"
check_error bad-last-line 1 "line 3 of $work/bad-last-line.txt is not valid UTF-8"
if [[ $(cat "$work/kept.npy") == "old content" ]]; then
    pass "bad-last-line: existing output unchanged"
else
    fail "bad-last-line: the existing output file was changed"
fi
check_no_temporary bad-last-line "$work"

# ------------------------------------------------------------------------------------------
# Runs with the model
# ------------------------------------------------------------------------------------------

if [[ -z $model_dir || ! -f $model_dir/config.json || ! -f $model_dir/model.safetensors ]]; then
    if ((failures > 0)); then
        echo "$failures checks failed"
        exit 1
    fi
    echo "skipped the runs with the model: MCA_MODEL_DIR ('$model_dir') holds no model; run tools/setup"
    exit 77
fi

# One compare run over blank lines, a CRLF line, a line of 602 tokens, a line of one
# megabyte (209,715 words) and a last line without a newline. Sentences 2 and 4 are cut to
# 512 tokens, and each gets one warning: the warm-up call and the MCA pass stay quiet.
{
    printf 'A short sentence.\n\n   \t \n'
    printf 'word %.0s' {1..600}
    printf '\nA line with a Windows line ending.\r\n'
    yes word | head -n 209715 | tr '\n' ' '
    printf '\nThe last line has no newline.'
} >"$work/mixed.txt"
run_embed mixed --mode compare --batch 2 --report json --output "$work/mixed.npy" "$work/mixed.txt"
if [[ $status != 0 ]]; then
    fail "mixed: exit status $status; standard error: $(head -c 2000 "$work/mixed.err")"
else
    pass "mixed: exit status 0"
    if grep -q '"sentences":5,' "$work/mixed.out"; then
        pass "mixed: 5 sentences"
    else
        fail "mixed: the report does not count 5 sentences: $(cat "$work/mixed.out")"
    fi
    warnings=$(grep -c "more than the model's maximum of 512; kept the first 512" "$work/mixed.err")
    if [[ $warnings == 2 ]]; then
        pass "mixed: one warning per truncated sentence"
    else
        fail "mixed: $warnings truncation warnings, expected 2: $(cat "$work/mixed.err")"
    fi
    for expected in \
        "warning: exact mode, sentences 1 to 2 (text 0 is sentence 1): text 1 has 602 tokens" \
        "warning: exact mode, sentences 3 to 4 (text 0 is sentence 3): text 1 has 209717 tokens"; do
        if grep -qF -- "$expected" "$work/mixed.err"; then
            pass "mixed: warns \"$expected\""
        else
            fail "mixed: standard error lacks \"$expected\": $(cat "$work/mixed.err")"
        fi
    done
    # A .npy header of 128 bytes, then 5 x 384 float32 values.
    size=$(stat -c %s "$work/mixed.npy" 2>/dev/null || echo missing)
    if [[ $size == $((128 + 5 * 384 * 4)) ]] && head -c 128 "$work/mixed.npy" | grep -qaF "'shape': (5, 384)"; then
        pass "mixed: output of shape (5, 384)"
    else
        fail "mixed: output has $size bytes or a wrong header, expected shape (5, 384)"
    fi
    check_no_temporary mixed "$work"
fi

# Enough sentences that the run lasts well beyond its first progress line at one second.
for i in {1..3000}; do
    printf 'Sentence number %d of a long input.\n' "$i"
done >"$work/many.txt"

# Kills a run of many.txt with signal $2 once it prints progress, and checks that the
# existing output file is unchanged and that no temporary file remains.
check_killed_mid_run() {
    local name=$1 signal=$2 expected_status=$3
    printf 'old content\n' >"$work/$name.npy"
    "$embed" --mode exact --batch 1 --output "$work/$name.npy" "$work/many.txt" \
        >"$work/$name.out" 2>"$work/$name.err" &
    local pid=$! waited=0
    until grep -q '^exact: ' "$work/$name.err" || ! kill -0 "$pid" 2>/dev/null || ((waited >= 6000)); do
        sleep 0.1
        waited=$((waited + 1))
    done
    kill "-$signal" "$pid" 2>/dev/null
    wait "$pid"
    status=$?
    if [[ $status != "$expected_status" ]]; then
        fail "$name: exit status $status, expected $expected_status from SIG$signal; standard error: $(head -c 600 "$work/$name.err")"
    else
        pass "$name: ended by SIG$signal"
    fi
    if [[ $(cat "$work/$name.npy") == "old content" ]]; then
        pass "$name: existing output unchanged"
    else
        fail "$name: the existing output file was changed"
    fi
    check_no_temporary "$name" "$work"
}
check_killed_mid_run killed-term TERM 143
check_killed_mid_run killed-kill KILL 137

# Signals while the complete temporary file waits for its rename: the module raises the
# signal in fsync. SIGTERM's handler removes the file. SIGKILL cannot be caught, so it
# leaves PATH.tmp.XXXXXX behind, as documented, and no file at PATH. ASan checks that it is
# loaded first unless verify_asan_link_order=0.
check_signal_at_fsync() {
    local name=$1 signal_number=$2 expected_status=$3 expected_stray=$4
    MCA_TEST_SIGNAL_AT_FSYNC=$signal_number LD_PRELOAD=$signal_module \
        ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0 \
        "$embed" --mode exact --output "$work/$name.npy" "$work/good.txt" \
        >"$work/$name.out" 2>"$work/$name.err"
    status=$?
    if [[ $status != "$expected_status" ]]; then
        fail "$name: exit status $status, expected $expected_status; standard error: $(head -c 600 "$work/$name.err")"
    else
        pass "$name: ended by signal $signal_number"
    fi
    if [[ -e $work/$name.npy ]]; then
        fail "$name: left a file at the output path"
    else
        pass "$name: no file at the output path"
    fi
    local stray
    stray=$(find "$work" -maxdepth 1 -name "$name.npy.tmp.*" | wc -l)
    if [[ $stray == "$expected_stray" ]]; then
        pass "$name: $stray temporary files, as expected"
    else
        fail "$name: $stray temporary files, expected $expected_stray"
    fi
    find "$work" -maxdepth 1 -name "$name.npy.tmp.*" -delete
}
check_signal_at_fsync term-at-fsync 15 143 0
check_signal_at_fsync kill-at-fsync 9 137 1

if ((failures > 0)); then
    echo "$failures checks failed"
    exit 1
fi
echo "all checks passed"
