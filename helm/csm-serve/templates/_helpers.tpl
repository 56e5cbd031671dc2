{{/* Chart name, truncated to the 63 characters a DNS label allows. */}}
{{- define "csm-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, or the release alone when it already contains the chart name. */}}
{{- define "csm-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "csm-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "csm-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "csm-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "csm-serve.labels" -}}
helm.sh/chart: {{ include "csm-serve.chart" . }}
{{ include "csm-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The `helm test` pod: not the server's selector labels (Service, PDB and NetworkPolicy
select the server pods), but labels the NetworkPolicy admits. */}}
{{- define "csm-serve.testLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}

{{- define "csm-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "csm-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "csm-serve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "csm-serve.cacheClaimName" -}}
{{- default (printf "%s-model-cache" (include "csm-serve.fullname" .)) .Values.modelCache.pvc.existingClaim }}
{{- end }}

{{- define "csm-serve.voicesClaimName" -}}
{{- default (printf "%s-voices" (include "csm-serve.fullname" .)) .Values.voices.pvc.existingClaim }}
{{- end }}

{{/* The voices directory inside the container: on the model cache, or on its own claim. */}}
{{- define "csm-serve.voicesDir" -}}
{{- if eq .Values.voices.storage "pvc" }}
{{- .Values.voices.mountPath }}
{{- else }}
{{- printf "%s/voices" .Values.modelCache.mountPath }}
{{- end }}
{{- end }}

{{/*
The pod's whole shutdown budget: the preStop sleep (load balancers stop sending), then
SIGTERM and the server's drain, then slack for the process to exit.
*/}}
{{- define "csm-serve.terminationGracePeriodSeconds" -}}
{{- add .Values.lifecycle.preStopSleepSeconds .Values.server.drainGraceSeconds .Values.lifecycle.terminationSlackSeconds }}
{{- end }}

{{/* Command-line flags of csm-serve, one list item per flag. */}}
{{- define "csm-serve.args" -}}
{{- $s := .Values.server -}}
- {{ printf "--model=%v" $s.model | quote }}
- {{ printf "--device=%v" $s.device | quote }}
- {{ printf "--dtype=%v" $s.dtype | quote }}
- {{ printf "--max-slots=%v" $s.maxSlots | quote }}
- {{ printf "--max-queue=%v" $s.maxQueue | quote }}
- "--host=0.0.0.0"
- {{ printf "--port=%v" .Values.service.port | quote }}
- {{ printf "--http-port=%v" .Values.service.httpPort | quote }}
- {{ printf "--metrics-port=%v" .Values.service.metricsPort | quote }}
- {{ printf "--drain-grace-s=%v" $s.drainGraceSeconds | quote }}
- {{ printf "--log-format=%v" $s.logFormat | quote }}
- {{ printf "--quantize=%v" $s.quantize | quote }}
- {{ printf "--prefix-cache-mb=%d" (int64 $s.prefixCacheMb) | quote }}
- {{ printf "--stream-buffer-s=%v" $s.streamBufferSeconds | quote }}
- {{ printf "--reader-stall-s=%v" $s.readerStallSeconds | quote }}
- {{ printf "--max-concurrent-rpcs=%d" (int64 $s.maxConcurrentRpcs) | quote }}
- {{ printf "--metrics-auth=%v" $s.metricsAuth | quote }}
- {{ printf "--http-header-timeout-s=%v" $s.http.headerTimeoutSeconds | quote }}
- {{ printf "--http-keep-alive-s=%v" $s.http.keepAliveSeconds | quote }}
- {{ printf "--http-max-connections=%d" (int64 $s.http.maxConnections) | quote }}
- {{ printf "--max-conversations=%d" (int64 $s.conversations.max) | quote }}
- {{ printf "--conversation-idle-s=%v" $s.conversations.idleSeconds | quote }}
- {{ printf "--conversation-max-lifetime-s=%v" $s.conversations.maxLifetimeSeconds | quote }}
{{- if $s.watermark.enabled }}
- "--watermark"
{{- else }}
- "--no-watermark"
{{- end }}
{{- with $s.watermark.key }}
- {{ printf "--watermark-key=%v" . | quote }}
{{- end }}
{{- with $s.watermark.weights }}
- {{ printf "--watermark-weights=%v" . | quote }}
{{- end }}
{{- with $s.tokenizer }}
- {{ printf "--tokenizer=%v" . | quote }}
{{- end }}
{{- with $s.mimiWeights }}
- {{ printf "--mimi-weights=%v" . | quote }}
{{- end }}
{{- if gt (int64 $s.maxMessageBytes) 0 }}
- {{ printf "--max-message-bytes=%d" (int64 $s.maxMessageBytes) | quote }}
{{- end }}
{{- if .Values.auth.existingSecret }}
- {{ printf "--auth-tokens-file=/etc/csm-serve/auth/%s" .Values.auth.secretKey | quote }}
{{- end }}
- {{ printf "--voices-dir=%s" (include "csm-serve.voicesDir" .) | quote }}
- {{ printf "--max-voices=%d" (int64 .Values.voices.maxVoices) | quote }}
- {{ printf "--max-voice-bytes=%d" (int64 .Values.voices.maxBytes) | quote }}
{{- range $s.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Settings that render valid YAML but would misbehave in a cluster. */}}
{{- define "csm-serve.validate" -}}
{{- $live := .Values.probes.liveness }}
{{- if le (mul $live.failureThreshold $live.periodSeconds | int) (int .Values.server.drainGraceSeconds) }}
{{- fail (printf "probes.liveness: failureThreshold x periodSeconds (%v s) must exceed server.drainGraceSeconds (%v s), or a draining pod (NOT_SERVING) is restarted mid-drain" (mul $live.failureThreshold $live.periodSeconds) .Values.server.drainGraceSeconds) }}
{{- end }}
{{- if and .Values.huggingface.offline (eq .Values.modelCache.type "emptyDir") }}
{{- fail "huggingface.offline=true needs weights already in the cache: use modelCache.type=pvc with a pre-filled claim" }}
{{- end }}
{{- $cache := .Values.modelCache }}
{{- if and (eq .Values.voices.storage "modelCache") (eq $cache.type "pvc") (eq (without $cache.pvc.accessModes "ReadOnlyMany" | len) 0) }}
{{- fail "voices.storage=modelCache needs a writable model cache, and this claim is ReadOnlyMany: set voices.storage=pvc" }}
{{- end }}
{{- if and (or .Values.httpIngress.enabled .Values.httpRoute.enabled) (eq (int .Values.service.httpPort) 0) }}
{{- fail "httpIngress and httpRoute route to the HTTP API: set service.httpPort (0 turns the API off)" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be at least autoscaling.minReplicas" }}
{{- end }}
{{- end }}
