const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { STATE, start } = require('./server');

module.exports = async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'securechat-e2e-'));
  const s = await start(dataDir);
  fs.writeFileSync(STATE, JSON.stringify({ dataDir, ...s }));
  process.env.SECURECHAT_E2E_STATE = STATE;
  process.env.SECURECHAT_URL = s.url;
};
