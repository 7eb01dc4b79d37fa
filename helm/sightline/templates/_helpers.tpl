{{- define "sightline.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "sightline.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sightline.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sightline.image" -}}
{{- $reg := .root.Values.image.registry -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- if $reg }}{{ printf "%s/%s:%s" $reg .image.repository $tag }}{{ else }}{{ printf "%s:%s" .image.repository $tag }}{{ end -}}
{{- end -}}

{{- define "sightline.clickhouseSecret" -}}
{{- .Values.clickhouse.existingSecret | default (printf "%s-clickhouse" (include "sightline.fullname" .)) -}}
{{- end -}}

{{- define "sightline.natsSecret" -}}
{{- .Values.nats.existingSecret | default (printf "%s-nats" (include "sightline.fullname" .)) -}}
{{- end -}}

{{- /* The ingest pods' ServiceAccount (leader election), named in rbac.yaml and workloads.yaml. */ -}}
{{- define "sightline.ingestServiceAccount" -}}
{{- printf "%s-ingest" (include "sightline.fullname" .) -}}
{{- end -}}

{{- define "sightline.tokenSecret" -}}
{{- .Values.query.existingTokenSecret | default (printf "%s-query-tokens" (include "sightline.fullname" .)) -}}
{{- end -}}

{{- /* Each workload's NATS credentials are its own key of the NATS secret: `ingest.creds`
for the ingest service, `query.creds` for the query service (snapshots read from the
SIGHTLINE_SNAPSHOTS bucket, and replay). A pod mounts only its own key, and the query pods
mount theirs only with snapshots or replay enabled (nothing else of theirs talks to NATS). */ -}}
{{- define "sightline.hasIngestNatsCreds" -}}
{{- if or .Values.nats.credentials .Values.nats.existingSecret }}true{{ end -}}
{{- end -}}

{{- /* The query service's NATS credentials: nats.queryCredentials, or the deprecated
nats.replayCredentials (queryCredentials wins when both are set). */ -}}
{{- define "sightline.queryNatsCredentials" -}}
{{- .Values.nats.queryCredentials | default .Values.nats.replayCredentials -}}
{{- end -}}

{{- /* Whether the query service talks to NATS at all: snapshots or replay. */ -}}
{{- define "sightline.queryUsesNats" -}}
{{- if or .Values.query.snapshots.enabled .Values.query.replay.enabled }}true{{ end -}}
{{- end -}}

{{- define "sightline.hasQueryNatsCreds" -}}
{{- if and (include "sightline.queryUsesNats" .) (or (include "sightline.queryNatsCredentials" .) .Values.nats.existingSecret) }}true{{ end -}}
{{- end -}}

{{- /* Whether the component's pods get NATS credentials: {"root": ., "component": ...}. */ -}}
{{- define "sightline.mountsNatsCreds" -}}
{{- if eq .component "ingest" }}{{ include "sightline.hasIngestNatsCreds" .root }}{{ else }}{{ include "sightline.hasQueryNatsCreds" .root }}{{ end -}}
{{- end -}}

{{- define "sightline.clientSecret" -}}
{{- .Values.query.existingClientSecret | default (printf "%s-query-clients" (include "sightline.fullname" .)) -}}
{{- end -}}

{{- /* The deprecated plain tokens (every scope, named token-<n>). */ -}}
{{- define "sightline.hasLegacyTokens" -}}
{{- if or .Values.query.tokens .Values.query.existingTokenSecret }}true{{ end -}}
{{- end -}}

{{- /* Any way to authenticate: named clients or the deprecated tokens. */ -}}
{{- define "sightline.hasTokens" -}}
{{- if or .Values.query.clients (include "sightline.hasLegacyTokens" .) }}true{{ end -}}
{{- end -}}

{{/* Pod and container security: non-root, read-only root filesystem, no privileges. */}}
{{- define "sightline.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sightline.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: ["ALL"]
{{- end -}}
