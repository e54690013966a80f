{{- define "aggd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aggd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "aggd.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "aggd.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "aggd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aggd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "aggd.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "aggd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "aggd.secretName" -}}
{{- default (include "aggd.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* A TOML value: strings quoted (JSON escapes are TOML escapes), lists
of them bracketed, numbers and booleans as they are. */}}
{{- define "aggd.tomlValue" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "slice" . }}[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ include "aggd.tomlValue" $v }}{{ end }}]
{{- else if kindIs "float64" . }}{{ if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else }}{{ . }}
{{- end }}
{{- end }}

{{/* aggd.toml from defaultUpstreams and upstreams. */}}
{{- define "aggd.configToml" -}}
default_upstreams = {{ include "aggd.tomlValue" .Values.defaultUpstreams }}
{{- range .Values.upstreams }}
{{- $u := . }}

[[upstream]]
{{- range $k := keys $u | sortAlpha }}
{{- if not (kindIs "map" (get $u $k)) }}
{{ $k }} = {{ include "aggd.tomlValue" (get $u $k) }}
{{- end }}
{{- end }}
{{- range $k := keys $u | sortAlpha }}
{{- $m := get $u $k }}
{{- if kindIs "map" $m }}
[upstream.{{ $k }}]
{{- range $mk := keys $m | sortAlpha }}
{{ toJson $mk }} = {{ include "aggd.tomlValue" (get $m $mk) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{ end }}

{{- define "aggd.servicePorts" -}}
- name: grpc
  port: {{ .Values.ports.grpc }}
  targetPort: grpc
  protocol: TCP
  appProtocol: grpc
- name: otlp-grpc
  port: {{ .Values.ports.otlpGrpc }}
  targetPort: grpc
  protocol: TCP
  appProtocol: grpc
- name: admin
  port: {{ .Values.ports.admin }}
  targetPort: admin
  protocol: TCP
{{- if .Values.dogstatsd.enabled }}
- name: dogstatsd
  port: {{ .Values.dogstatsd.port }}
  targetPort: dogstatsd
  protocol: UDP
{{- end }}
{{- if .Values.otlpHttp.enabled }}
- name: otlp-http
  port: {{ .Values.otlpHttp.port }}
  targetPort: otlp-http
  protocol: TCP
{{- end }}
{{- end }}
