"""Many machines behind one server, on Ray.

`inferd serve --ray-address ADDRESS` joins a Ray cluster: each model process then runs on a
node Ray picks for its resources (`host.ModelHost`, an actor per process), and the server talks
to it over TCP as it talks to a local one over a Unix socket (`remote.RemoteModelProcess`).
Without --ray-address nothing here is imported, and Ray need not be installed.
"""
