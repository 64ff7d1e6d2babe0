"""The Python baseline: the `websockets` library's own broadcast pattern
(websockets.broadcast to every other client), over TLS.

    python3 python_broadcast.py CHAIN_PEM KEY_PEM

Listens on 127.0.0.1, port 0; prints https://127.0.0.1:PORT first.
"""
import asyncio
import ssl
import sys

import websockets

CLIENTS = set()


async def handler(websocket):
    CLIENTS.add(websocket)
    try:
        async for message in websocket:
            websockets.broadcast([c for c in CLIENTS if c is not websocket], message)
    finally:
        CLIENTS.discard(websocket)


async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    async with websockets.serve(handler, "127.0.0.1", 0, ssl=context, max_size=1 << 20) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"https://127.0.0.1:{port}", flush=True)
        await asyncio.Future()


asyncio.run(main())
