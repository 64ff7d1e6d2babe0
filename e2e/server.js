// Starts and stops the real SecureChat executable for the browser tests:
// 127.0.0.1, port 0 on first start (the same port on a restart), a
// temporary data directory and a test master key.
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..');
const BINARY = process.env.SECURECHAT_BIN || path.join(ROOT, 'target', 'debug', 'securechat');
const STATE = path.join(os.tmpdir(), `securechat-e2e-${process.ppid}-state.json`);
const MASTER_KEY = Buffer.from('securechat e2e master key 32 by!').toString('base64');

/** @returns {{dataDir: string, url: string, pid: number, port: number}} */
function current() {
  return JSON.parse(fs.readFileSync(process.env.SECURECHAT_E2E_STATE || STATE, 'utf8'));
}

/** Starts the host; resolves with its URL. */
function start(dataDir, port = 0) {
  return new Promise((resolve, reject) => {
    const child = spawn(BINARY, ['host', '--headless', '--no-browser', '--bind', `127.0.0.1:${port}`, '--data-dir', dataDir], {
      env: { ...process.env, SECURECHAT_MASTER_KEY: MASTER_KEY, SECURECHAT_LOG: 'warn' },
      stdio: ['ignore', 'pipe', 'inherit'],
      detached: false,
    });
    const timer = setTimeout(() => reject(new Error('the server did not start in time')), 60_000);
    child.on('exit', (code) => reject(new Error(`the server exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = /^\s+(https:\/\/127\.0\.0\.1:(\d+))\/$/.exec(line);
      if (m) {
        clearTimeout(timer);
        child.unref();
        resolve({ url: m[1], port: Number(m[2]), pid: child.pid });
      }
    });
  });
}

function stop(pid) {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const check = setInterval(() => {
      try {
        process.kill(pid, 0);
      } catch {
        clearInterval(check);
        resolve();
      }
    }, 100);
  });
}

/** Restarts the running host on the same port and data directory. */
async function restart() {
  const s = current();
  await stop(s.pid);
  const started = await start(s.dataDir, s.port);
  fs.writeFileSync(process.env.SECURECHAT_E2E_STATE || STATE, JSON.stringify({ ...s, pid: started.pid }));
}

module.exports = { BINARY, MASTER_KEY, STATE, current, restart, start, stop };
