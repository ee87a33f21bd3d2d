// Validates every ServiceMonitor and PrometheusRule in the YAML files given against the
// Prometheus Operator's CRD schemas (kubernetes-models, generated from the operator's
// CRDs), offline. Prints one line per resource; exits 1 if any is invalid, 2 if a file
// holds no resource of these kinds.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import { ServiceMonitor, PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const kinds = { ServiceMonitor, PrometheusRule };
let failed = false;
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc || doc.apiVersion !== "monitoring.coreos.com/v1" || !(doc.kind in kinds)) continue;
    checked += 1;
    const name = `${doc.kind}/${doc.metadata?.name}`;
    try {
      new kinds[doc.kind](doc).validate();
      console.log(`ok ${name}`);
    } catch (err) {
      failed = true;
      console.log(`INVALID ${name}: ${err.message}`);
    }
  }
}
if (checked === 0) {
  console.log("no ServiceMonitor or PrometheusRule found");
  process.exit(2);
}
process.exit(failed ? 1 : 0);
