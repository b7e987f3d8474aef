// Validates the cert-manager objects (cert-manager.io/v1 Certificate, Issuer, ClusterIssuer)
// in YAML files against cert-manager v1's schema, compiled into @kubernetes-models/cert-manager
// (kubernetes-validate skips these kinds, exit 0). Every error is printed with its JSON path.
//
//   node tests/k8s/validate-cert-manager.mjs FILE.yaml...
//
// The YAML is read as YAML 1.1, as the API server reads it, so a bare `on` or `no` is a
// boolean here too. The compiled schemas accept unknown fields, so a misspelt key would pass:
// every key must also be a property name the kind's compiled schema (or ObjectMeta's) knows. Exit 0 when every cert-manager object passes and at least one was found;
// 1 otherwise (an unknown cert-manager kind fails, it is never skipped). The packages come
// from tests/browser's lock file (npm ci --prefix tests/browser).
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(new URL("../browser/package.json", import.meta.url));
const YAML = require("yaml");
const models = {
  "cert-manager.io/v1/Certificate": require("@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate").Certificate,
  "cert-manager.io/v1/Issuer": require("@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer").Issuer,
  "cert-manager.io/v1/ClusterIssuer": require("@kubernetes-models/cert-manager/cert-manager.io/v1/ClusterIssuer").ClusterIssuer,
};

/// The folder of an installed package (its `exports` hide the compiled schemas).
const packageDir = (name) => dirname(require.resolve(`${name}/package.json`));

/// Property names a compiled ajv validator reads (`data3.secretName`), for one kind.
function knownFields(apiVersion, kind) {
  const [group, version] = apiVersion.split("/");
  const pascal = group.split(/[.-]/).map((p) => p[0].toUpperCase() + p.slice(1)).join("");
  const files = [
    join(packageDir("@kubernetes-models/cert-manager"), "_schemas", `${pascal}${version.replace(/^v/, "V")}${kind}.js`),
    join(packageDir("@kubernetes-models/apimachinery"), "_schemas", "IoK8sApimachineryPkgApisMetaV1ObjectMeta.js"),
  ];
  const names = new Set();
  for (const f of files) {
    for (const m of readFileSync(f, "utf8").matchAll(/data\d*\.([A-Za-z_][A-Za-z0-9_]*)/g)) {
      names.add(m[1]);
    }
  }
  return names;
}

/// Paths of keys the schema does not know; label and annotation keys are free-form.
function unknownKeys(value, known, path = "") {
  if (Array.isArray(value)) {
    return value.flatMap((v, i) => unknownKeys(v, known, `${path}/${i}`));
  }
  if (value === null || typeof value !== "object") {
    return [];
  }
  return Object.entries(value).flatMap(([k, v]) => {
    const here = `${path}/${k}`;
    const bad = known.has(k) ? [] : [here];
    return /\/(labels|annotations)$/.test(here) ? bad : bad.concat(unknownKeys(v, known, here));
  });
}

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
    const problems = unknownKeys(obj, knownFields(obj.apiVersion, obj.kind)).map((p) => `data${p} is not a field`);
    try {
      new Model(obj).validate();
    } catch (e) {
      problems.unshift(e.message);
    }
    if (problems.length) {
      console.log(`FAIL ${where} ${name}: ${problems.join(", ")}`);
      failed++;
    } else {
      console.log(`ok ${where} ${name}`);
    }
  });
}
if (checked === 0) {
  console.log("FAIL no cert-manager object found");
  process.exit(1);
}
process.exit(failed ? 1 : 0);
