"""JSON and random helpers of scripts/demo:
get FILE PATH | redact FILE | deceq A B | random NBYTES | hex NBYTES | uuid."""

import json
import sys
from decimal import Decimal, InvalidOperation

SECRET_KEYS = ("password", "token", "secret")


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def walk(doc, path):
    for part in path.split(".") if path else []:
        if isinstance(doc, list):
            try:
                doc = doc[int(part)]
            except (ValueError, IndexError):
                sys.exit("no element %r in a list of %d" % (part, len(doc)))
        elif isinstance(doc, dict):
            if part not in doc:
                sys.exit("no field %r (fields: %s)" % (part, ", ".join(sorted(doc))))
            doc = doc[part]
        else:
            sys.exit("cannot take %r of %r" % (part, doc))
    return doc


def redact(doc):
    if isinstance(doc, dict):
        return {
            k: ("<redacted>" if any(s in k.lower() for s in SECRET_KEYS) else redact(v))
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [redact(v) for v in doc]
    return doc


cmd = sys.argv[1]
if cmd == "get":
    value = walk(load(sys.argv[2]), sys.argv[3])
    print(value if isinstance(value, str) else json.dumps(value))
elif cmd == "redact":
    try:
        print(json.dumps(redact(load(sys.argv[2])), separators=(",", ":"))[:2000])
    except ValueError:
        with open(sys.argv[2], encoding="utf-8", errors="replace") as f:
            print(f.read(500))
elif cmd == "deceq":
    try:
        sys.exit(0 if Decimal(sys.argv[2]) == Decimal(sys.argv[3]) else 1)
    except InvalidOperation:
        sys.exit(1)
elif cmd == "random":
    import secrets

    print(secrets.token_urlsafe(int(sys.argv[2])))
elif cmd == "hex":
    import secrets

    print(secrets.token_hex(int(sys.argv[2])))
elif cmd == "uuid":
    import uuid

    print(uuid.uuid4())
