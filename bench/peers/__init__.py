"""The peers: the same job (join a room, broadcast to its members across two processes
through Redis) done by python-socketio, Node's socket.io and the bare `websockets` library."""
