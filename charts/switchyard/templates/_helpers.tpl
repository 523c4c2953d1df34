{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "switchyard.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "switchyard.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
The prefix of every generated name: the full name cut to 40 characters, so
that the longest suffix ("-agent-own-fleetnode", 20) stays within 63 and
the agents' StatefulSet name within 52 (its pods' controller-revision-hash
label adds 11).
*/}}
{{- define "switchyard.prefix" -}}
{{- include "switchyard.fullname" . | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.operator.name" -}}
{{- printf "%s-operator" (include "switchyard.prefix" .) -}}
{{- end -}}

{{- define "switchyard.agent.name" -}}
{{- printf "%s-agent" (include "switchyard.prefix" .) -}}
{{- end -}}

{{- define "switchyard.operator.serviceAccount" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "switchyard.operator.name" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.agent.serviceAccount" -}}
{{- if .Values.agents.serviceAccount.create -}}
{{- default (include "switchyard.agent.name" .) .Values.agents.serviceAccount.name -}}
{{- else -}}
{{- required "agents.serviceAccount.name is required when agents.serviceAccount.create is false" .Values.agents.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.labels" -}}
{{- range $k := list "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/part-of" "helm.sh/chart" }}
{{- if hasKey ($.Values.commonLabels | default dict) $k }}
{{- fail (printf "commonLabels sets %q, which the chart sets on every object; remove it" $k) }}
{{- end }}
{{- end }}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "switchyard.operator.selector" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "switchyard.agent.selector" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: node-agent
{{- end -}}

{{/*
A pod template's labels: the selector, then commonLabels and the pod's own
labels, none of which may set a selector key (a duplicate key is invalid
YAML, and a changed selector label orphans the pods).
Call with (dict "root" . "selector" "switchyard.operator.selector" "labels" .Values.operator.podLabels "what" "operator.podLabels").
*/}}
{{- define "switchyard.podLabels" -}}
{{- $selector := include .selector .root | fromYaml -}}
{{- $extra := merge (dict) (.labels | default dict) (.root.Values.commonLabels | default dict) -}}
{{- range $k, $_ := $selector }}
{{- if hasKey $extra $k }}
{{- fail (printf "%s (or commonLabels) sets %q, which the pods' selector owns; remove it" $.what $k) }}
{{- end }}
{{- end }}
{{- include .selector .root }}
{{- with $extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
An image reference: [registry/]repository, then @digest when a digest is
given (the tag is then only informative and left out), else :tag, where an
empty tag means the chart's appVersion. The schema makes tag a string, so
1.10 cannot turn into 1.1.
Call with (dict "image" .Values.operator.image "root" .).
*/}}
{{- define "switchyard.image" -}}
{{- $repo := .image.repository -}}
{{- with .image.registry }}{{ $repo = printf "%s/%s" . $repo }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.webhookSecret" -}}
{{- default (printf "%s-webhook" (include "switchyard.prefix" .)) .Values.webhook.existingSecret -}}
{{- end -}}

{{/*
Soft anti-affinity: prefer spreading the pods of `selector` over nodes.
Used when the values give no affinity of their own.
*/}}
{{- define "switchyard.softAntiAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include .selector .root | nindent 12 }}
{{- end -}}

{{/*
"true" when the agents' admission policy is installed: asked for, and the
cluster serves ValidatingAdmissionPolicy v1: discovery lists it, or the
server is Kubernetes >= 1.30, where it is GA (offline rendering has no
discovery, only a version).
*/}}
{{- define "switchyard.admissionPolicy" -}}
{{- $served := or (.Capabilities.APIVersions.Has "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy") (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) -}}
{{- if and .Values.agents.enabled .Values.admissionPolicy.enabled $served -}}
true
{{- end -}}
{{- end -}}
