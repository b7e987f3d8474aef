// Validates the cert-manager objects (cert-manager.io/v1 Certificate, Issuer, ClusterIssuer)
// in YAML files against cert-manager v1's schema, compiled into @kubernetes-models/cert-manager
// (kubernetes-validate skips these kinds, exit 0). Every error is printed with its JSON path.
//
//   node tests/k8s/validate-cert-manager.mjs FILE.yaml...
//
// The YAML is read as YAML 1.1, as the API server reads it, so a bare `on` or `no` is a
// boolean here too. Exit 0 when every cert-manager object passes and at least one was found;
// 1 otherwise (an unknown cert-manager kind fails, it is never skipped). The packages come
// from tests/browser's lock file (npm ci --prefix tests/browser).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(new URL("../browser/package.json", import.meta.url));
const YAML = require("yaml");
const models = {
  "cert-manager.io/v1/Certificate": require("@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate").Certificate,
  "cert-manager.io/v1/Issuer": require("@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer").Issuer,
  "cert-manager.io/v1/ClusterIssuer": require("@kubernetes-models/cert-manager/cert-manager.io/v1/ClusterIssuer").ClusterIssuer,
};

let checked = 0;
let failed = 0;
for (const file of process.argv.slice(2)) {
  const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"), { version: "1.1" });
  docs.forEach((doc, i) => {
    const where = `${file}#${i}`;
    if (doc.errors.length) {
      console.log(`FAIL ${where}: not YAML: ${doc.errors.map((e) => e.message).join("; ")}`);
      failed++;
      return;
    }
    const obj = doc.toJS();
    if (!obj || typeof obj.apiVersion !== "string" || !obj.apiVersion.includes("cert-manager.io/")) {
      return;
    }
    const name = `${obj.kind}/${obj.metadata?.name}`;
    const Model = models[`${obj.apiVersion}/${obj.kind}`];
    if (!Model) {
      console.log(`FAIL ${where} ${name}: no schema for ${obj.apiVersion} ${obj.kind}`);
      failed++;
      return;
    }
    checked++;
    try {
      new Model(obj).validate();
      console.log(`ok ${where} ${name}`);
    } catch (e) {
      console.log(`FAIL ${where} ${name}: ${e.message}`);
      failed++;
    }
  });
}
if (checked === 0) {
  console.log("FAIL no cert-manager object found");
  process.exit(1);
}
process.exit(failed ? 1 : 0);
