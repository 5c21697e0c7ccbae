// Node's socket.io with @socket.io/redis-adapter: the same job as the other peers.
// `node server.js PORT`; two processes share Redis (BENCH_REDIS_URL, BENCH_PREFIX).
// Events: `join` (room name, acknowledged with "ok") and `send` ({room, body}), which
// emits `message` with the same data to the whole room on every process.
// WebSocket transport only, no per-message compression, no persistence.
"use strict";
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

async function main() {
  const port = Number(process.argv[2] || 3000);
  const url = process.env.BENCH_REDIS_URL || "redis://127.0.0.1:6379/0";
  const prefix = (process.env.BENCH_PREFIX || "bench") + "-node";
  const pub = createClient({ url });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  const io = new Server({
    transports: ["websocket"],
    perMessageDeflate: false,
    httpCompression: false,
    serveClient: false,
    adapter: createAdapter(pub, sub, { key: prefix }),
  });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack("ok");
    });
    socket.on("send", (data) => {
      io.to(data.room).emit("message", data);
    });
  });
  io.listen(port);
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).then(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
