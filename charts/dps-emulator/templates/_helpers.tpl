{{- define "dps-emulator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dps-emulator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dps-emulator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dps-emulator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dps-emulator.labels" -}}
{{ include "dps-emulator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The host name clients use: hostName, or the Service's name in the cluster. */}}
{{- define "dps-emulator.host" -}}
{{- if .Values.hostName -}}
{{- .Values.hostName -}}
{{- else -}}
{{- printf "%s.%s.svc" (include "dps-emulator.fullname" .) .Release.Namespace -}}
{{- if ne (int .Values.service.port) 443 }}:{{ .Values.service.port }}{{ end -}}
{{- end -}}
{{- end -}}
