{{- define "dps-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dps-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dps-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dps-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dps-operator.labels" -}}
{{ include "dps-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The rules for the namespaced kinds and what they reference, in one namespace or all. */}}
{{- define "dps-operator.namespacedRules" -}}
# Reconcile enrollments, enrollment sets and connections: read and watch them, add and remove
# the finalizer.
- apiGroups: ["dps.iot.dev"]
  resources: ["enrollmentgroups", "individualenrollments", "individualenrollmentsets", "provisioningservices"]
  verbs: ["get", "list", "watch", "patch"]
# Report their status (server-side apply on the status subresource).
- apiGroups: ["dps.iot.dev"]
  resources:
    - enrollmentgroups/status
    - individualenrollments/status
    - individualenrollmentsets/status
    - provisioningservices/status
  verbs: ["patch"]
# Read the Secrets they reference (keys, certificates, connection strings, webhook URLs), watch
# them to follow rotations, create missing symmetric key Secrets, release a generated key
# Secret (drop its ownerReference) when its enrollment stays in DPS after the resource goes,
# write a group's device keys Secret, and delete the Secrets only the operator wrote (new keys
# a create never used, device keys no longer asked for).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Read CA bundles and enrollment sets' member lists kept in ConfigMaps, and watch them (as
# metadata) to follow changes of member lists.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch"]
# Find the Secret a cert-manager Certificate named as a certificate source issues.
- apiGroups: ["cert-manager.io"]
  resources: ["certificates"]
  verbs: ["get"]
# Record events about the resources.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
