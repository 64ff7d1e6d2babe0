// Rebuilds embedded-web/vendor/unicode-emoji-json/groups.json from the npm
// package unicode-emoji-json (MIT): groups of [emoji, name, skin-tone flag].
//   npm pack unicode-emoji-json@0.9.0 && tar xzf unicode-emoji-json-0.9.0.tgz
//   node tools/vendor-data.mjs package/data-by-group.json
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

// The common-password list (embedded-web/vendor/zxcvbn-ts-language-common/
// passwords.json) is the MIT-licensed @zxcvbn-ts/language-common 3.0.4
// src/passwords.json, lowercased, entries of 8 characters or more, sorted:
//   npm pack @zxcvbn-ts/language-common@3.0.4 && tar xzf zxcvbn-ts-language-common-3.0.4.tgz
//   python3 -c "import json; d=json.load(open('package/src/passwords.json')); \
//     json.dump(sorted({p.lower() for p in d if len(p) >= 8}), \
//     open('embedded-web/vendor/zxcvbn-ts-language-common/passwords.json', 'w'), separators=(',', ':'))"
