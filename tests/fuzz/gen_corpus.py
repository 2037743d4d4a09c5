#!/usr/bin/env python3
"""gen_corpus.py: writes the seed corpus of the fuzz targets into tests/fuzz/corpus/.

The corpus is checked in; run this only to change it (it rewrites every seed it names and
leaves other files alone). The tokens are signed with the secret that fuzz_jwt.c fixes and
expire in 2100, so they stay valid at the target's fixed `now` (2023-11-14).

    python3 tests/fuzz/gen_corpus.py
"""
import base64
import hashlib
import hmac
import json
import os
import sys

SECRET = b"fuzz-secret-not-for-production-012345678"  # FUZZ_SECRET in fuzz_jwt.c
NOW = 1700000000  # FUZZ_NOW in fuzz_jwt.c
FAR = 4102444800  # 2100-01-01

assert len(SECRET) == 40


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def token(header, claims, alg="sha256", key=SECRET, sig=None):
    """A compact JWS; header and claims are dicts (or raw bytes), signed with HMAC-alg."""
    h = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    c = claims if isinstance(claims, bytes) else json.dumps(claims, separators=(",", ":")).encode()
    signing_input = b64url(h) + b"." + b64url(c)
    if sig is None:
        sig = b64url(hmac.new(key, signing_input, getattr(hashlib, alg)).digest())
    return signing_input + b"." + sig


HS256 = {"alg": "HS256", "typ": "JWT"}
ALICE = {"sub": "alice", "iat": NOW, "exp": FAR}

good = token(HS256, ALICE)
# The last signature character carries 2 unused bits: flip one of them ('Q' <-> 'R' style).
last = good[-1:]
alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
noncanon = good[:-1] + alphabet[alphabet.index(last) ^ 1 : (alphabet.index(last) ^ 1) + 1]

JWT = {
    "valid_alice": good,
    "valid_nbf_now": token(HS256, {"sub": "bob", "iat": NOW, "nbf": NOW, "exp": FAR}),
    "valid_nbf_skew": token(HS256, {"sub": "bob", "nbf": NOW + 60, "exp": FAR}),
    "valid_odd_sub": token(HS256, {"sub": "a.b-c_d@e.example", "exp": FAR}),
    "valid_sub_64": token(HS256, {"sub": "u" * 64, "exp": FAR}),
    "valid_no_typ": token({"alg": "HS256"}, {"sub": "carol", "exp": FAR}),
    "kid_crit": token({"alg": "HS256", "kid": "k1", "crit": ["exp"]}, ALICE),
    "exp_float": token(HS256, {"sub": "alice", "exp": FAR + 0.5}),
    "nbf_future": token(HS256, {"sub": "bob", "nbf": NOW + 61, "exp": FAR}),
    "expired": token(HS256, {"sub": "alice", "iat": NOW - 7200, "exp": NOW - 1}),
    "exp_equals_now": token(HS256, {"sub": "alice", "exp": NOW}),
    "no_exp": token(HS256, {"sub": "alice", "iat": NOW}),
    "exp_string": token(HS256, {"sub": "alice", "exp": str(FAR)}),
    "no_sub": token(HS256, {"exp": FAR}),
    "bad_sub": token(HS256, {"sub": "al ice", "exp": FAR}),
    "sub_65": token(HS256, {"sub": "u" * 65, "exp": FAR}),
    "alg_none": token({"alg": "none", "typ": "JWT"}, ALICE, sig=b"AAAA"),
    "alg_none_empty_sig": token({"alg": "none"}, ALICE, sig=b""),
    "alg_hs512": token({"alg": "HS512", "typ": "JWT"}, ALICE, alg="sha512"),
    "alg_rs256_hmac": token({"alg": "RS256", "typ": "JWT"}, ALICE),
    "wrong_secret": token(HS256, ALICE, key=SECRET[:-1] + b"9"),
    "sig_truncated": good[:-4],
    "sig_noncanonical": noncanon,
    "sig_padded": good + b"=",
    "four_parts": good + b".AAAA",
    "empty_parts": b"..",
    "header_not_json": b64url(b"{alg:HS256}") + b"." + b64url(b"{}") + b".AAAA",
    "claims_array": token(HS256, b"[1,2,3]"),
    "user_id": b"alice",
    "oversized": token(HS256, {"sub": "alice", "exp": FAR, "pad": "x" * 6200}),
}

JSON = {
    "send": b'{"to":"bob","body":"hello","client_msg_id":"c-1"}',
    "send_group": b'{"chat":"g_0123456789abcdef","body":"hi all"}',
    "send_both": b'{"to":"bob","chat":"g_1","body":"x"}',
    "ack_up_to": b'{"up_to":42}',
    "ack_seqs": b'{"seqs":[1,2,3,9007199254740992]}',
    "read_conversation": b'{"conversation":"bob","up_to":9007199254740992}',
    "u64_edges": b'{"up_to":9007199254740993,"seq":-1,"ts":1.5,"message_id":1e3,"after":"7"}',
    "u64_neg_zero": b'{"up_to":-0,"seq":0.0,"ts":1E400}',
    "group_create": b'{"name":"team \xe2\x9c\x93","members":["alice","bob"]}',
    "group_update": b'{"add":["carol"],"remove":["bob"]}',
    "unicode_escapes": b'{"body":"caf\\u00e9 \\ud83d\\ude00 \\u2713"}',
    "unicode_raw": b'{"body":"caf\xc3\xa9 \xf0\x9f\x98\x80 \xef\xbf\xbf \xf4\x8f\xbf\xbf"}',
    "lone_surrogate": b'{"body":"\\ud800 \\udc00"}',
    "nul_escape": b'{"body":"a\\u0000b"}',
    "raw_tab": b'{"body":"a\tb"}',
    "overlong": b'{"body":"\xc0\xaf"}',
    "surrogate_bytes": b'{"body":"\xed\xa0\x80"}',
    "above_max": b'{"body":"\xf4\x90\x80\x80"}',
    "trailing_garbage": b'{"a":1} x',
    "trailing_space": b'{"a":1} \r\n\t',
    "array": b"[1,2]",
    "string": b'"str"',
    "deep": b'{"a":' + b"[" * 200 + b"]" * 200 + b"}",
    "duplicate_keys": b'{"to":"a","to":"b","body":"x","body":null}',
    "escapes": b'{"body":"say \\"hi\\" \\\\ \\/ \\b\\f\\n\\r\\t","\\u0074o":"bob"}',
    "numbers": b'{"ts":1700000000000,"seq":0,"message_id":123,"x":-12.5e-3}',
    "bom": b'\xef\xbb\xbf{"to":"bob"}',
    "empty_object": b"{}",
    "key_escapes": b'{"\\\\u0000":1,"\\u00e9":"x","":""}',
}

# fuzz_sse: "event NUL id NUL data", or plain data.
SSE = {
    "message": b"message\x0042\x00hello",
    "crlf": b"message\x007\x00line one\r\nline two",
    "cr": b"message\x007\x00a\rb\rc",
    "lf": b"message\x007\x00a\nb\n",
    "mixed": b"m\x001\x00\r\r\n\n\n\r",
    "trailing_cr": b"m\x001\x00end\r",
    "leading_lf": b"m\x001\x00\nstart",
    "json": b'message\x00123\x00{"seq":123,"body":"hi\\nthere","from":"alice"}',
    "data_only": b"plain data\r\nwith lines",
    "nul_in_data": b"m\x001\x00a\x00b",
    "no_event_no_id": b"\x00\x00data",
    "colon_data": b"a:b\x00 7\x00: not a comment\r\n:still data",
    "space_data": b"ev\x00id\x00  two spaces",
    "unicode": b"m\x001\x00caf\xc3\xa9\r\n\xf0\x9f\x98\x80",
    "empty_data": b"m\x001\x00",
    "u64_zero": b"0",
    "u64_max": b"18446744073709551615",
    "u64_over": b"18446744073709551616",
    "u64_leading_zeros": b"0000018446744073709551615",
    "u64_sign": b"-1",
    "u64_plus": b"+1",
    "u64_space": b" 1",
    "u64_typical": b"1700000000123",
}

QUERY = {
    "after_limit": b"after=42&limit=100",
    "token_ticket": b"access_token=" + good + b"&ticket=0123456789abcdef0123456789abcdef",
    "plus_percent": b"q=a+b%20c&x=%41%42%4a%4B",
    "bad_escape": b"a=%zz&b=2",
    "nul_escape": b"a=%00&b=%&c=%4",
    "no_key": b"=nokey&k&&=",
    "repeated": b"k=v=w&&&k=second&after=1&after=2",
    "utf8": b"%E2%9C%93=%f0%9f%98%80&with=b%C3%B6b",
    "poll": b"timeout=25&with=bob&before=9&chat=g_x",
    "lone": b"%",
    "plus_only": b"+=+",
    "amp_only": b"&",
    "raw_bytes": b"k=\xff\xfe&\x01=\x7f",
    "nul_raw": b"a=1\x00b=2",
    # chat_url_unescape gets the same input: chatd's paths.
    "path_escapes": b"/v1/blocks/a%41%62c",
    "path_nul": b"/v1/users/bob%00x/presence",
    "path_double": b"/v1/chats/%2541%2f..%2F",
    "path_trailing": b"/v1/blocks/100%",
}

# fuzz_api (chat_config_set): NUL-separated section, key, value triples.
def ini(*triples):
    return b"\x00".join(b"\x00".join(t) for t in triples)


CONFIG = {
    "port": ini((b"server", b"port", b"8081")),
    "port_zero": ini((b"server", b"port", b"0")),
    "port_over": ini((b"server", b"port", b"65536")),
    "port_space_plus": ini((b"server", b"port", b" +8081")),
    "port_hex": ini((b"server", b"port", b"0x10")),
    "port_huge": ini((b"server", b"port", b"99999999999999999999")),
    "port_negative": ini((b"mysql", b"port", b"-3306")),
    "secret": ini((b"auth", b"jwt_secret", SECRET)),
    "secret_twice": ini((b"auth", b"jwt_secret", b"first"), (b"auth", b"jwt_secret", SECRET)),
    "mode": ini((b"delivery", b"mode", b"client"), (b"delivery", b"mode", b"CLIENT")),
    "policy": ini((b"delivery", b"ack_policy", b"delete")),
    "log_level": ini((b"log", b"level", b"debug"), (b"log", b"level", b"verbose")),
    "socket": ini((b"mysql", b"socket", b"/run/mysqld/mysqld.sock")),
    "unknown": ini((b"server", b"nope", b"1"), (b"nope", b"port", b"1")),
    "redis_host_empty": ini((b"redis", b"host", b"")),
    "node_id_long": ini((b"server", b"node_id", b"n" * 49)),
    "push_url": ini((b"push", b"url", b"https://push.example/hook"), (b"push", b"after", b"0")),
    "poll_cross": ini((b"delivery", b"poll_timeout", b"100"),
                      (b"delivery", b"poll_timeout_max", b"10")),
    "fcgi": ini((b"fcgi", b"listen", b"/run/chat/fcgi.sock"), (b"fcgi", b"threads", b"2"),
                (b"fcgi", b"max_polls", b"2")),
    "stream_buffer": ini((b"delivery", b"stream_buffer_bytes", b"1073741824"),
                         (b"delivery", b"send_rate", b"0")),
    "many": ini((b"server", b"threads", b"8"), (b"mysql", b"user", b"chat"),
                (b"redis", b"channel_prefix", b""), (b"server", b"listen", b"0.0.0.0"),
                (b"redis", b"reconnect_max_ms", b"100"), (b"log", b"level", b"warn")),
}

TARGETS = {
    "fuzz_json": JSON,
    "fuzz_jwt": JWT,
    "fuzz_sse": SSE,
    "fuzz_query": QUERY,
    "fuzz_api": CONFIG,
}


def main():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    for target, seeds in TARGETS.items():
        d = os.path.join(root, target)
        os.makedirs(d, exist_ok=True)
        for name, data in seeds.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        print(f"{target}: {len(seeds)} seeds", file=sys.stderr)


if __name__ == "__main__":
    main()
