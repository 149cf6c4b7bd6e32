{{/* Names are fixed (one Detour per cluster: the CRDs and the webhook are cluster-wide),
     and the operator's flags and RBAC resourceNames refer to them. */}}
{{- define "detour.operatorName" -}}detour-operator{{- end -}}
{{- define "detour.webhookService" -}}detour-webhook{{- end -}}
{{- define "detour.webhookConfig" -}}detour-injector{{- end -}}
{{- define "detour.webhookSecret" -}}detour-webhook-tls{{- end -}}

{{- define "detour.labels" -}}
app.kubernetes.io/name: detour
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "detour.selectorLabels" -}}
app.kubernetes.io/name: detour
app.kubernetes.io/component: operator
{{- end -}}

{{- define "detour.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "detour.sidecarImage" -}}
{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default .Chart.AppVersion }}
{{- end -}}
