{{/* The chart's name, or nameOverride. */}}
{{- define "coffer-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: fullnameOverride, else the release name, plus the name when the release name does
not contain it. Objects get suffixes (`-metrics`, `-secrets`, `-leader`), so it stays short. */}}
{{- define "coffer-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "coffer-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "coffer-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coffer-operator.name" . }}
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

{{/* Settings that the schema cannot relate to each other: refused at render time. */}}
{{- define "coffer-operator.validate" -}}
{{- if and .Values.watch.allNamespaces .Values.watch.namespaces -}}
{{- fail "watch.namespaces and watch.allNamespaces exclude each other: list namespaces, or ask for every namespace" -}}
{{- end -}}
{{- if and .Values.leaderElection.enabled (ge (int .Values.leaderElection.renewSeconds) (int .Values.leaderElection.leaseDurationSeconds)) -}}
{{- fail "leaderElection.renewSeconds must be below leaderElection.leaseDurationSeconds" -}}
{{- end -}}
{{- end -}}
