// Validates every custom resource of a rendered manifest (stdin: `kubectl kustomize` output)
// against its CRD's schema, with the models the @kubernetes-models packages generate from the
// CRDs (cert-manager, KEDA, Prometheus Operator, CloudNativePG). A custom resource of a kind
// not listed here fails: every kind the manifests use is checked.
import { readFileSync } from "node:fs";
import yaml from "js-yaml";
import { ClusterIssuer } from "@kubernetes-models/cert-manager/cert-manager.io/v1/ClusterIssuer";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";
import { ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { Cluster } from "@kubernetes-models/cloudnative-pg/postgresql.cnpg.io/v1/Cluster";

const models = {
  "cert-manager.io/v1/ClusterIssuer": ClusterIssuer,
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "postgresql.cnpg.io/v1/Cluster": Cluster,
};

const docs = yaml.loadAll(readFileSync(0, "utf8")).filter(Boolean);
let failed = 0;
let checked = 0;
for (const doc of docs) {
  // Core groups (no dot, or *.k8s.io) are kubernetes-validate's.
  const group = doc.apiVersion.includes("/") ? doc.apiVersion.split("/")[0] : "";
  if (!group.includes(".") || group.endsWith(".k8s.io")) continue;
  const key = `${doc.apiVersion}/${doc.kind}`;
  const Model = models[key];
  const name = `${key} ${doc.metadata?.name}`;
  if (!Model) {
    console.error(`FAIL ${name}: no CRD schema for this kind`);
    failed++;
    continue;
  }
  try {
    new Model(doc).validate();
    checked++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.error(`FAIL ${name}: ${e.message}`);
  }
}
console.log(`${checked} custom resources valid, ${failed} failed`);
process.exit(failed ? 1 : 0);
