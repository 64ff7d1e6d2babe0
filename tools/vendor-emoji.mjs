// Rebuilds embedded-web/vendor/unicode-emoji-json/groups.json from the npm
// package unicode-emoji-json (MIT): groups of [emoji, name, skin-tone flag].
//   npm pack unicode-emoji-json@0.9.0 && tar xzf unicode-emoji-json-0.9.0.tgz
//   node tools/vendor-emoji.mjs package/data-by-group.json
import { readFileSync, writeFileSync } from 'node:fs';

const source = JSON.parse(readFileSync(process.argv[2] ?? 'package/data-by-group.json', 'utf8'));
const groups = source.map((g) => ({
  name: g.name,
  emojis: g.emojis.map((e) => [e.emoji, e.name, e.skin_tone_support ? 1 : 0]),
}));
writeFileSync(
  new URL('../embedded-web/vendor/unicode-emoji-json/groups.json', import.meta.url),
  JSON.stringify(groups),
);
