{{- define "vlmq.fullname" -}}
{{- printf "%s-vlmq" .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- end -}}

{{- define "vlmq.labels" -}}
app.kubernetes.io/name: vlmq
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "vlmq.selector" -}}
app.kubernetes.io/name: vlmq
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "vlmq.secretName" -}}
{{- default (printf "%s-secrets" (include "vlmq.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "vlmq.image" -}}
{{ printf "%s:%s" .repository .tag }}
{{- end -}}

{{/* The settings every process reads: the ConfigMap and the Secret, as environment variables. */}}
{{- define "vlmq.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "vlmq.fullname" . }}-settings
  - secretRef:
      name: {{ include "vlmq.secretName" . }}
{{- end -}}

{{/* The Celery list a queue uses in Redis: its own name (priority_steps [0], shared/queue/app.py). */}}
{{- define "vlmq.inferenceQueue" -}}
{{ printf "vlmq.inference.%s" . }}
{{- end -}}

{{- define "vlmq.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: false
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{- define "vlmq.settingsHook" -}}
"helm.sh/hook": pre-install,pre-upgrade
"helm.sh/hook-weight": "-1"
"helm.sh/hook-delete-policy": before-hook-creation
{{- end -}}
