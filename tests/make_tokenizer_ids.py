"""Write the reference WordPiece ids for tests/data/tokenizer_cases.txt.

The ids come from Hugging Face tokenizers, pinned to tokenizers==0.23.3, with the
model's own tokenizer.json. Each case is encoded with add_special_tokens=True and with
padding and truncation off. tests/test_tokenizer.c encodes with max_length 512, so the
script rejects a case of more than 512 ids.

Run it from the repository root after changing the cases file:

    python3 -m venv /tmp/tokenizers-venv
    /tmp/tokenizers-venv/bin/pip install tokenizers==0.23.3
    /tmp/tokenizers-venv/bin/python tests/make_tokenizer_ids.py [MODEL_DIR]

MODEL_DIR defaults to models/all-MiniLM-L6-v2, which tools/setup fills. The output,
tests/data/tokenizer_ids.txt, has one line per case: the ids separated by spaces, a tab,
then the case exactly as written in tokenizer_cases.txt, so that the C test can tell
when the cases changed after the ids were written.

Case file format (the C test parses it the same way): every line that does not start
with "#" is one case, an empty line included. Escapes are \\\\ (backslash), \\t, \\n, \\r
and \\u{HEX} for any code point except surrogates; any other backslash sequence is an
error.
"""

import argparse
import pathlib
import re
import sys

import tokenizers

PINNED_VERSION = "0.23.3"
MAX_LENGTH = 512

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
CASES_PATH = REPOSITORY / "tests" / "data" / "tokenizer_cases.txt"
IDS_PATH = REPOSITORY / "tests" / "data" / "tokenizer_ids.txt"

ESCAPE = re.compile(r"\\(u\{([0-9A-Fa-f]{1,6})\}|.|$)")
SIMPLE_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def unescape(line: str, line_number: int) -> str:
    """Return the text of a case line with its escapes replaced.

    Raises ValueError naming the line for an unknown escape or an invalid code point.
    """

    def replace(match: re.Match) -> str:
        if match.group(2) is not None:
            code_point = int(match.group(2), 16)
            if code_point > 0x10FFFF or 0xD800 <= code_point <= 0xDFFF:
                raise ValueError(
                    f"{CASES_PATH}:{line_number}: \\u{{{match.group(2)}}} is not a "
                    "Unicode scalar value"
                )
            return chr(code_point)
        escape = match.group(1)
        if escape not in SIMPLE_ESCAPES:
            raise ValueError(
                f"{CASES_PATH}:{line_number}: unknown escape \\{escape}; use \\\\, \\t, "
                "\\n, \\r or \\u{HEX}"
            )
        return SIMPLE_ESCAPES[escape]

    return ESCAPE.sub(replace, line)


def read_cases() -> list[tuple[str, str]]:
    """Return (line as written, unescaped text) for every case of the cases file."""
    cases = []
    lines = CASES_PATH.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if line.startswith("#"):
            continue
        if "\t" in line or "\r" in line:
            raise ValueError(
                f"{CASES_PATH}:{number}: write tabs and carriage returns as \\t and \\r"
            )
        cases.append((line, unescape(line, number)))
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "model_dir",
        nargs="?",
        default=str(REPOSITORY / "models" / "all-MiniLM-L6-v2"),
        help="directory that contains the model's tokenizer.json",
    )
    args = parser.parse_args()

    if tokenizers.__version__ != PINNED_VERSION:
        print(
            f"tokenizers {tokenizers.__version__} is installed but the ids are pinned to "
            f"{PINNED_VERSION}; install tokenizers=={PINNED_VERSION}",
            file=sys.stderr,
        )
        return 1

    tokenizer_path = pathlib.Path(args.model_dir) / "tokenizer.json"
    tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.no_truncation()

    output = [
        f"# Written by tests/make_tokenizer_ids.py with tokenizers {PINNED_VERSION} and the",
        "# tokenizer.json of all-MiniLM-L6-v2. One line per case of tokenizer_cases.txt:",
        "# the ids, a tab, and the case as written there. Do not edit by hand.",
    ]
    for written, text in read_cases():
        ids = tokenizer.encode(text, add_special_tokens=True).ids
        if len(ids) > MAX_LENGTH:
            print(
                f"case {written!r} has {len(ids)} ids, more than the test's max_length "
                f"of {MAX_LENGTH}; shorten it",
                file=sys.stderr,
            )
            return 1
        output.append(" ".join(str(i) for i in ids) + "\t" + written)

    IDS_PATH.write_text("\n".join(output) + "\n", encoding="utf-8")
    print(f"wrote {len(output) - 3} cases to {IDS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
