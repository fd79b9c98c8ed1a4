"""API processes: several processes taking HTTP requests on the server's one port.

One Python process parses, validates and relays a few thousand requests a second; a GPU
embedding short texts takes more (issue 17). With `inferd serve --api-processes N` (N > 1) the
server starts N front processes and deals the port's connections to them in turn (`dealer`:
it accepts each and hands it over a Unix socket pair), and itself listens only on Unix sockets
of its own, for them. A front takes embeddings and rerank requests itself: it validates them
as the server does, asks the server for a slot over a Unix socket (`control`: the server looks
the model up, checks the key's scope and the abort list, and queues the request in the model's
one admission queue), sends the request to the model process, and tells the server when the
slot is free again, with the answer's status for the metrics. Everything else it passes on to
the server untouched (`forward`), so every path answers the same whichever front took the
connection. The server then spends on an embedding request two short lines, not the HTTP
parsing and relaying that are most of what a request costs it.

    connection ─▶ server (accepts it) ─▶ a front, for the connection's life
    request ─▶ front ──slot?──▶ server (manager, admission, metrics)
                  └──request──▶ model process
"""
