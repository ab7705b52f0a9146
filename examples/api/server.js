// A small API as a notebook would export it, with no dependencies: JSON over HTTP and a
// WebSocket echo at /ws. It listens on $PORT (Shoal sets it) or 3000.
const http = require("http");
const crypto = require("crypto");

const port = Number(process.env.PORT || 3000);
let hits = 0;

const server = http.createServer((request, response) => {
  hits += 1;
  const url = new URL(request.url, "http://localhost");
  if (url.pathname === "/" || url.pathname === "/hello") {
    const name = url.searchParams.get("name") || "world";
    response.writeHead(200, { "content-type": "application/json" });
    response.end(JSON.stringify({ hello: name, hits }));
    return;
  }
  if (url.pathname === "/events") {
    // Server-sent events: three ticks, then the stream ends.
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    let tick = 0;
    const timer = setInterval(() => {
      tick += 1;
      response.write(`data: tick ${tick}\n\n`);
      if (tick === 3) {
        clearInterval(timer);
        response.end();
      }
    }, 100);
    return;
  }
  response.writeHead(404, { "content-type": "application/json" });
  response.end(JSON.stringify({ error: "not found" }));
});

// WebSocket echo (RFC 6455, text and binary frames up to 64 KiB).
server.on("upgrade", (request, socket) => {
  const key = request.headers["sec-websocket-key"];
  if (new URL(request.url, "http://localhost").pathname !== "/ws" || !key) {
    socket.end("HTTP/1.1 404 Not Found\r\n\r\n");
    return;
  }
  const accept = crypto
    .createHash("sha1")
    .update(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
    .digest("base64");
  socket.write(
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`
  );
  let buffered = Buffer.alloc(0);
  socket.on("data", (chunk) => {
    buffered = Buffer.concat([buffered, chunk]);
    for (;;) {
      const frame = readFrame(buffered);
      if (!frame) return;
      buffered = buffered.subarray(frame.length);
      if (frame.opcode === 0x8) return socket.end(encodeFrame(0x8, Buffer.alloc(0)));
      if (frame.opcode === 0x9) socket.write(encodeFrame(0xa, frame.payload));
      if (frame.opcode === 0x1 || frame.opcode === 0x2) socket.write(encodeFrame(frame.opcode, frame.payload));
    }
  });
  socket.on("error", () => socket.destroy());
});

function readFrame(buffer) {
  if (buffer.length < 2) return null;
  const opcode = buffer[0] & 0x0f;
  const masked = (buffer[1] & 0x80) !== 0;
  let length = buffer[1] & 0x7f;
  let offset = 2;
  if (length === 126) {
    if (buffer.length < 4) return null;
    length = buffer.readUInt16BE(2);
    offset = 4;
  } else if (length === 127) {
    return { opcode: 0x8, payload: Buffer.alloc(0), length: buffer.length };
  }
  const maskLength = masked ? 4 : 0;
  if (buffer.length < offset + maskLength + length) return null;
  const payload = Buffer.from(buffer.subarray(offset + maskLength, offset + maskLength + length));
  if (masked) {
    const mask = buffer.subarray(offset, offset + 4);
    for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
  }
  return { opcode, payload, length: offset + maskLength + length };
}

function encodeFrame(opcode, payload) {
  const header = payload.length < 126 ? Buffer.from([0x80 | opcode, payload.length]) : Buffer.from([0x80 | opcode, 126, payload.length >> 8, payload.length & 0xff]);
  return Buffer.concat([header, payload]);
}

server.listen(port, () => console.log(`api listening on ${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
