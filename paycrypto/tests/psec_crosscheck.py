"""Answers paycrypto's cross-check requests with psec, one request per line on stdin.

Each line is an operation and its hex or decimal fields; each answer is one line: the result
(lower-case hex, or the PIN/PVV digits), or ERR when psec refuses the input.
"""

import sys
import warnings

warnings.simplefilter("ignore")

from cryptography.hazmat.primitives import cmac  # noqa: E402
from cryptography.hazmat.primitives.ciphers import algorithms  # noqa: E402
from psec import des, mac, pin as pinmod, pinblock  # noqa: E402


def h(text):
    return b"" if text == "-" else bytes.fromhex(text)


def format0_under(zpk, p, pan):
    return des.encrypt_tdes_ecb(zpk, pinblock.encode_pinblock_iso_0(p, pan))


def format4_under(key, p, pan, random):
    pinblock._urandom = lambda n: random[:n]
    return pinblock.encipher_pinblock_iso_4(key, p, pan)


def answer(f):
    op = f[0]
    if op == "e0":  # pin pan -> clear format 0 block
        return pinblock.encode_pinblock_iso_0(f[1], f[2]).hex()
    if op == "d0":  # clear_block pan -> pin
        return pinblock.decode_pinblock_iso_0(h(f[1]), f[2])
    if op == "e4":  # key pin pan random -> format 4 block
        return format4_under(h(f[1]), f[2], f[3], h(f[4])).hex()
    if op == "d4":  # key block pan -> pin
        return pinblock.decipher_pinblock_iso_4(h(f[1]), h(f[2]), f[3])
    if op == "t40":  # tpk block pan zpk -> format 0 block under zpk
        p = pinblock.decipher_pinblock_iso_4(h(f[1]), h(f[2]), f[3])
        return format0_under(h(f[4]), p, f[3]).hex()
    if op == "t00":  # zpk1 block pan zpk2
        clear = des.decrypt_tdes_ecb(h(f[1]), h(f[2]))
        p = pinblock.decode_pinblock_iso_0(clear, f[3])
        return format0_under(h(f[4]), p, f[3]).hex()
    if op == "t44":  # key1 block pan key2 random
        p = pinblock.decipher_pinblock_iso_4(h(f[1]), h(f[2]), f[3])
        return format4_under(h(f[4]), p, f[3], h(f[5])).hex()
    if op == "mac":  # key message
        k = h(f[1])
        return mac.generate_retail_mac(k[:8], k[8:], h(f[2]), 1).hex()
    if op == "pvv":  # pvk pan pvki pin (4 digits)
        return pinmod.generate_visa_pvv(h(f[1]), f[3], f[4], f[2])
    if op == "cmac":  # key message -> AES-CMAC (cryptography's, not psec's: psec has none)
        c = cmac.CMAC(algorithms.AES(h(f[1])))
        c.update(h(f[2]))
        return c.finalize().hex()
    if op == "kcv":  # key
        return des.generate_kcv(h(f[1]), 3).hex()
    raise SystemExit(f"unknown operation {op!r}")


for line in sys.stdin:
    fields = line.split()
    if not fields:
        continue
    try:
        out = answer(fields)
    except ValueError:
        out = "ERR"
    print(out, flush=False)
