{{/* Labels on every object of the chart. */}}
{{- define "cardgate.labels" -}}
app.kubernetes.io/name: cardgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Labels that select the operator's pods (Service, PDB). */}}
{{- define "cardgate.selectorLabels" -}}
app.kubernetes.io/name: cardgate
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator image. */}}
{{- define "cardgate.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The sidecar image. */}}
{{- define "cardgate.sidecarImage" -}}
{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* Where the webhooks are called; the names are fixed because the operator maintains their caBundle. */}}
{{- define "cardgate.webhookClient" -}}
service:
  name: cardgate-operator
  namespace: {{ .Release.Namespace }}
  port: 443
{{- end }}

{{/* Namespaces the webhooks never apply to: the operator's own. */}}
{{- define "cardgate.notOwnNamespace" -}}
- key: kubernetes.io/metadata.name
  operator: NotIn
  values: [{{ .Release.Namespace | quote }}]
{{- end }}

{{/* cainjector annotation in cert-manager mode. */}}
{{- define "cardgate.webhookAnnotations" -}}
{{- if .Values.certManager.enabled }}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/cardgate-webhook-serving
{{- end }}
{{- end }}
