// A small JSON API as a notebook would export it: no dependencies, listens on $PORT or 3000.
const http = require("http");

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
  response.writeHead(404, { "content-type": "application/json" });
  response.end(JSON.stringify({ error: "not found" }));
});

server.listen(port, () => console.log(`api listening on ${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
