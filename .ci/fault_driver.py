"""Drives the real server until its store stops it, then checks, after a restart, that
every acknowledged write replays its first answer byte for byte (`.ci/faults`).

    fault_driver.py drive PORT WORKDIR [TRIGGER]   # TRIGGER: a file created after 2 000 writes
    fault_driver.py replay PORT WORKDIR
"""
import http.client
import json
import os
import sys

mode, port, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
trigger = sys.argv[4] if len(sys.argv) > 4 else None
admin = os.environ["SPENDGATE_ADMIN_KEY"]


def call(method, path, key, body=None, idem=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    h = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if idem:
        h["idempotency-key"] = idem
    c.request(method, path, json.dumps(body) if body is not None else None, h)
    r = c.getresponse()
    return r.status, r.read().decode()


def drive():
    st, _ = call("POST", "/v1/programs", admin, {"id": "df", "policy": "consumer-prepaid-africa", "currency": "NGN"})
    assert st == 201, st
    st, b = call("POST", "/v1/programs/df/api_keys", admin)
    key = json.loads(b)["api_key"]
    assert call("POST", "/v1/programs/df/deposits", key, {"amount": "900000000.00", "currency": "NGN"}, "dep")[0] == 201
    cards = []
    for i in range(50):
        assert call("POST", "/v1/cardholders", key, {"id": f"h{i}", "name": "Fault", "kyc": "verified"}, f"h{i}")[0] == 201
        st, b = call("POST", "/v1/cards", key, {"cardholder_id": f"h{i}", "kind": "virtual"}, f"c{i}")
        card = json.loads(b)["id"]
        assert call("POST", f"/v1/cards/{card}/fund", key, {"amount": "5000000.00"}, f"f{i}")[0] == 201
        cards.append(card)
    acked = []  # (method, path, body, idempotency key, answer)
    i = 0
    while i < 200_000:
        i += 1
        if trigger and i == 2_000:
            open(trigger, "w").close()
        card = cards[i % len(cards)]
        body = {"id": f"a{i}", "card_id": card, "amount": "1.00", "currency": "NGN",
                "merchant": {"id": f"m{i % 3000}", "name": "Shop", "mcc": "5411", "country": "NG"},
                "channel": "pos", "type": "purchase"}
        try:
            st, b = call("POST", "/v1/authorizations", key, body)
        except (ConnectionError, OSError, http.client.HTTPException):
            break
        if st != 200:
            print(f"authorization {i}: {st} {b[:200]}")
            break
        acked.append(("POST", "/v1/authorizations", body, None, b))
        if i % 4 == 0 and json.loads(b)["approved"]:
            try:
                st, b = call("POST", f"/v1/authorizations/a{i}/captures", key, {"amount": "1.00"}, f"cap{i}")
            except (ConnectionError, OSError, http.client.HTTPException):
                break
            if st == 201:
                acked.append(("POST", f"/v1/authorizations/a{i}/captures", {"amount": "1.00"}, f"cap{i}", b))
    json.dump({"key": key, "acked": acked}, open(f"{work}/acked.json", "w"))
    print(f"{len(acked)} acknowledged writes before the store stopped the server")


def replay():
    d = json.load(open(f"{work}/acked.json"))
    bad = 0
    for method, path, body, idem, answer in d["acked"]:
        st, again = call(method, path, d["key"], body, idem)
        if again != answer:
            bad += 1
            if bad < 5:
                print(f"DIFFERENT after restart: {path}\n  first: {answer[:200]}\n  now:   {again[:200]}")
    print(f"{len(d['acked'])} acknowledged writes replayed after restart, {bad} different")
    sys.exit(1 if bad else 0)


drive() if mode == "drive" else replay()
