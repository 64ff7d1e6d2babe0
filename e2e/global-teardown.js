const fs = require('node:fs');
const { current, stop } = require('./server');

module.exports = async () => {
  const s = current();
  await stop(s.pid);
  fs.rmSync(s.dataDir, { recursive: true, force: true });
  fs.rmSync(process.env.SECURECHAT_E2E_STATE, { force: true });
};
