{{/* Full name: the release name, plus the chart name when the release name does not contain it. */}}
{{- define "coffer-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "coffer-operator.selectorLabels" -}}
app.kubernetes.io/name: coffer-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "coffer-operator.labels" -}}
{{ include "coffer-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: coffer
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "coffer-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "coffer-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}


{{/* The namespaces the operator reconciles, as a JSON list (empty when it watches every namespace). */}}
{{- define "coffer-operator.watchNamespaces" -}}
{{- if .Values.watch.allNamespaces -}}
{{- list | toJson -}}
{{- else -}}
{{- default (list .Release.Namespace) .Values.watch.namespaces | uniq | toJson -}}
{{- end -}}
{{- end -}}
