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

{{/* Prometheus finds every pod by these annotations: /metrics on the API's port, on metrics.port
     for Celery workers (each pod is scraped on its own; queue depths come from the API only). */}}
{{- define "vlmq.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end -}}

{{/* A Celery worker container's metrics and health: served by its main process on metrics.port,
     samples of its pool processes shared through an emptyDir. Indented by the caller. */}}
{{- define "vlmq.workerOps" -}}
ports:
  - {name: metrics, containerPort: {{ .Values.metrics.port }}}
livenessProbe:
  httpGet: {path: /healthz, port: metrics}
  initialDelaySeconds: 10
  periodSeconds: 20
  failureThreshold: 3
{{- end -}}

{{- define "vlmq.workerOpsEnv" -}}
- {name: VLMQ_METRICS_PORT, value: {{ .Values.metrics.port | quote }}}
- {name: VLMQ_METRICS_DIR, value: /var/run/vlmq-metrics}
{{- end -}}

{{- define "vlmq.metricsVolume" -}}
- name: metrics
  emptyDir: {medium: Memory, sizeLimit: 64Mi}
{{- end -}}
