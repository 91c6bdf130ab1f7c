#!/usr/bin/env python3
"""How flat the store itself is across rooms: the MongoDB-protocol server at
MESS_CHAT_MONGO_URL (default the services' SecantusDB on 127.0.0.1:27017), written as the
service writes it under `bench --rooms-only`'s closed loop (32 at a time, journaled majority
writes): over 10 rooms sends fall into batches of about three (one insert of three documents
into the room's collection), over 10,000 rooms each send is its own batch (one single-document
insert). Prints both rates and their ratio, the store's own share of the per-send cost ratio the
bench reports; drops its database after.

    ~/.cache/mess-chat-services/venv/bin/python3 scripts/store-rooms-ratio.py

(the services' virtualenv has `pymongo`; `pip install pymongo` elsewhere). Run it on an idle
server.
"""
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pymongo

URL = os.environ.get("MESS_CHAT_MONGO_URL",
                     "mongodb://127.0.0.1:27017/?retryWrites=false&directConnection=true")
DOCS = 6000
AT_ONCE = 32


def rate(db, rooms, per_insert):
    for i in range(rooms):
        db[f"r{rooms}-{i}"].insert_one({"_id": "meta"})

    def insert(batch):
        room = db[f"r{rooms}-{batch % rooms}"]
        docs = [{"seq": batch * per_insert + k, "text": "x" * 60} for k in range(per_insert)]
        if per_insert == 1:
            room.insert_one(docs[0])
        else:
            room.insert_many(docs)

    started = time.perf_counter()
    with ThreadPoolExecutor(AT_ONCE) as pool:
        list(pool.map(insert, range(DOCS // per_insert)))
    return DOCS / (time.perf_counter() - started)


def main():
    client = pymongo.MongoClient(URL, maxPoolSize=2 * AT_ONCE, w="majority", journal=True)
    db = client[f"store_rooms_ratio_{os.getpid()}"]
    try:
        few = rate(db, 10, 3)
        many = rate(db, 10_000, 1)
    finally:
        client.drop_database(db.name)
    print(f"10 rooms, inserts of 3 documents:      {few:7.0f} documents/s")
    print(f"10,000 rooms, single-document inserts: {many:7.0f} documents/s")
    print(f"ratio                                  {many / few:7.2f}x")


if __name__ == "__main__":
    main()
