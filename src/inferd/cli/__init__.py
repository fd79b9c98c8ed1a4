"""The `inferd` command line. Client commands talk to the server over HTTP only."""
