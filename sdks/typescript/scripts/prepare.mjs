#!/usr/bin/env node
// `npm run prepare` (npm runs it on `npm install` here, on `npm pack`, and
// when this folder is installed as a dependency): builds dist/ with tsc.
//
// `npm install ./sdks/typescript` from another project links this folder
// without installing its dependencies here, so tsc (and the runtime
// dependencies dist/ imports) would be missing: install them first, exactly
// as package-lock.json says (npm ci, scripts off so this does not recurse).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = join(pkg, "node_modules/typescript/bin/tsc");
if (!existsSync(tsc)) {
  console.error("jobd: installing the SDK's build dependencies (npm ci) in", pkg);
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("npm_")));
  execFileSync("npm", ["ci", "--ignore-scripts", "--no-audit", "--no-fund"], { cwd: pkg, stdio: "inherit", env });
}
execFileSync(process.execPath, [tsc, "-p", join(pkg, "tsconfig.json")], { cwd: pkg, stdio: "inherit" });
