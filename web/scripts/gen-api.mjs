// Generates src/api.gen.ts, the dashboard's types of the HTTP API, from the OpenAPI document
// with openapi-typescript; the one way the file is made, so a check can make it again.
//
//   node scripts/gen-api.mjs                   from openapi.json (the saved served document)
//   node scripts/gen-api.mjs --from URL|FILE   from a running server's /api/openapi.json or a
//                                              file, saving it as openapi.json too
//   node scripts/gen-api.mjs --from-cli        from `../target/debug/suho openapi` (the document
//                                              a gateway of the default configuration serves),
//                                              saving it as openapi.json too
//   node scripts/gen-api.mjs --check [...]     compare instead of write; exit 1 on a difference
//
// The served document (GET /api/openapi.json) is the source of record: it adds what lives in
// code and configuration (the traded symbols, the price and lot steps) to the bare one.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import openapiTS, { astToString, COMMENT_HEADER } from "openapi-typescript";

const web = join(dirname(fileURLToPath(import.meta.url)), "..");
export const GENERATED = join(web, "src/api.gen.ts");
export const SAVED = join(web, "openapi.json");

/** The TypeScript openapi-typescript makes of `doc` (a parsed document), as checked in. */
export async function generate(doc) {
  const ast = await openapiTS(structuredClone(doc), { emptyObjectsUnknown: true, silent: true });
  return `${COMMENT_HEADER}${astToString(ast)}`;
}

/** The saved document as it is written: two-space JSON and a final newline. */
export function serialize(doc) {
  return `${JSON.stringify(doc, null, 2)}\n`;
}

async function load(args) {
  const at = args.indexOf("--from");
  if (args.includes("--from-cli")) {
    const out = execFileSync(join(web, "../target/debug/suho"), ["openapi"], { encoding: "utf8", maxBuffer: 64 << 20 });
    return { doc: JSON.parse(out), save: true };
  }
  if (at >= 0) {
    const src = args[at + 1];
    if (!src) throw new Error("--from needs a URL or a file");
    if (/^https?:\/\//.test(src)) {
      const res = await fetch(src);
      if (!res.ok) throw new Error(`GET ${src}: ${res.status}`);
      return { doc: await res.json(), save: true };
    }
    return { doc: JSON.parse(readFileSync(src, "utf8")), save: true };
  }
  return { doc: JSON.parse(readFileSync(SAVED, "utf8")), save: false };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const { doc, save } = await load(args);
  const ts = await generate(doc);
  if (args.includes("--check")) {
    const now = readFileSync(GENERATED, "utf8");
    if (now !== ts) {
      console.error("src/api.gen.ts differs from what the document gives: run `npm run gen:api`");
      process.exit(1);
    }
    console.log("src/api.gen.ts matches the document");
  } else {
    writeFileSync(GENERATED, ts);
    if (save) writeFileSync(SAVED, serialize(doc));
    console.log(`wrote src/api.gen.ts${save ? " and openapi.json" : ""}`);
  }
}
