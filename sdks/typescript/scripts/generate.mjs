#!/usr/bin/env node
// Regenerates src/gen from the repository's proto/ (jobd/v1/jobd.proto,
// google/rpc/status.proto) and this package's proto/ (google/rpc/
// error_details.proto, for the typed error details), with buf and
// protoc-gen-es from node_modules: no network, no system protoc.
//
//   npm run generate                 # into src/gen
//   node scripts/generate.mjs --out DIR   # elsewhere (the staleness test)
import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const repoProto = resolve(pkg, "../../proto");
const outArg = process.argv.indexOf("--out");
const out = outArg >= 0 ? resolve(process.argv[outArg + 1]) : join(pkg, "src/gen");

// One input tree: buf compiles a directory as one module.
const input = mkdtempSync(join(tmpdir(), "jobd-ts-proto-"));
try {
  if (!existsSync(join(repoProto, "jobd/v1/jobd.proto"))) {
    throw new Error(`no ${repoProto}/jobd/v1/jobd.proto: run from a jobd checkout`);
  }
  cpSync(join(repoProto, "jobd"), join(input, "jobd"), { recursive: true });
  cpSync(join(repoProto, "google/rpc/status.proto"), join(input, "google/rpc/status.proto"));
  cpSync(join(pkg, "proto/google/rpc/error_details.proto"), join(input, "google/rpc/error_details.proto"));
  writeFileSync(join(input, "buf.yaml"), "version: v2\n");
  const template = JSON.stringify({
    version: "v2",
    clean: true,
    plugins: [
      {
        local: join(pkg, "node_modules/.bin/protoc-gen-es"),
        out,
        opt: ["target=ts", "import_extension=js"],
      },
    ],
  });
  const buf = join(pkg, "node_modules/.bin/buf");
  execFileSync(buf, ["generate", input, "--template", template], { stdio: "inherit", cwd: pkg });
} finally {
  rmSync(input, { recursive: true, force: true });
}
