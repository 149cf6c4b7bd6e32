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

{{- /* An image reference: repository@digest when a digest is set (immutable: what was
     reviewed is what runs), else repository:tag (tag defaulting to the chart's appVersion). */ -}}
{{- define "detour.imageRef" -}}
{{- if .image.digest -}}
{{ .image.repository }}@{{ .image.digest }}
{{- else -}}
{{ .image.repository }}:{{ .image.tag | default .appVersion }}
{{- end -}}
{{- end -}}

{{- define "detour.image" -}}
{{ include "detour.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end -}}

{{- define "detour.sidecarImage" -}}
{{ include "detour.imageRef" (dict "image" .Values.sidecar.image "appVersion" .Chart.AppVersion) }}
{{- end -}}

{{- /* The operator's service account, as the apiserver names it in userInfo. */ -}}
{{- define "detour.serviceAccountUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:{{ include "detour.operatorName" . }}
{{- end -}}
