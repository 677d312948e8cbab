"""Answers acqlink's cross-check requests with pyiso8583, one request per line on stdin.

  dec <message hex>            -> the fields pyiso8583 decodes, as "t=<hex> 2=<hex> ..."
                                  (every value hex-encoded, keys in ascending order), or ERR
  enc <key>=<value hex> ...    -> the message pyiso8583 encodes from those fields, hex, or ERR

The field spec is the profile of acquirer-link.md 12.4, written out independently of acqlink.
"""

import sys

import iso8583


def field(length, max_len):
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": length,
            "max_len": max_len, "desc": ""}


SPEC = {
    "h": field(0, 0),
    "t": field(0, 4),
    "p": field(0, 16),
    "1": field(0, 16),
    "2": field(2, 19),
    "3": field(0, 6),
    "4": field(0, 12),
    "7": field(0, 10),
    "11": field(0, 6),
    "12": field(0, 6),
    "13": field(0, 4),
    "14": field(0, 4),
    "22": field(0, 3),
    "25": field(0, 2),
    "37": field(0, 12),
    "38": field(0, 6),
    "39": field(0, 2),
    "41": field(0, 8),
    "42": field(0, 15),
    "49": field(0, 3),
    "52": field(0, 16),
    "55": field(3, 510),
    "64": field(0, 16),
    "70": field(0, 3),
    "90": field(0, 42),
    "128": field(0, 16),
}
# pyiso8583 wants an entry for every field number; the profile's messages never set the others.
for n in range(2, 129):
    SPEC.setdefault(str(n), field(0, 0))


def key_order(k):
    return (0, 0) if k == "t" else (1, int(k))


def answer(words):
    op = words[0]
    if op == "dec":
        data = bytes.fromhex(words[1])
        try:
            doc, _ = iso8583.decode(data, SPEC)
        except iso8583.DecodeError:
            return "ERR"
        keys = sorted((k for k in doc if k not in ("h", "p", "1")), key=key_order)
        return " ".join(f"{k}={doc[k].encode('ascii').hex()}" for k in keys)
    if op == "enc":
        doc = {}
        for w in words[1:]:
            k, v = w.split("=", 1)
            doc[k] = bytes.fromhex(v).decode("ascii")
        try:
            data, _ = iso8583.encode(doc, SPEC)
        except iso8583.EncodeError:
            return "ERR"
        return bytes(data).hex()
    raise SystemExit(f"unknown operation {op!r}")


for line in sys.stdin:
    words = line.split()
    if words:
        print(answer(words), flush=False)
