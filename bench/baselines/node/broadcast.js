// The Node baseline: the `ws` library's own broadcast example (every other
// open client), over TLS.
//
//   node broadcast.js CHAIN_PEM KEY_PEM
//
// Listens on 127.0.0.1, port 0; prints https://127.0.0.1:PORT first.
'use strict';
const fs = require('node:fs');
const https = require('node:https');
const { WebSocketServer, WebSocket } = require('ws');

const server = https.createServer({ cert: fs.readFileSync(process.argv[2]), key: fs.readFileSync(process.argv[3]) });
const wss = new WebSocketServer({ server, maxPayload: 1 << 20 });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client !== ws && client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
    }
  });
});
server.listen(0, '127.0.0.1', () => console.log(`https://127.0.0.1:${server.address().port}`));
