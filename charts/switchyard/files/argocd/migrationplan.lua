-- Argo CD health of a switchyard.dev MigrationPlan.
-- Healthy: Succeeded. Suspended: Paused. Degraded: Failed, Invalid or
-- RolledBack (the fleet is safe, the migration did not happen).
-- Progressing: everything else, and a status the operator has not yet
-- written for the current generation.
local hs = {status = "Progressing", message = "Waiting for the Switchyard operator"}
if obj.status == nil or obj.status.phase == nil then
  return hs
end
local s = obj.status
if s.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and s.observedGeneration < obj.metadata.generation then
  hs.message = "The operator has not yet seen generation " .. obj.metadata.generation
  return hs
end
local phase = s.phase
local message = s.message or phase
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Paused" then
  hs.status = "Suspended"
elseif phase == "Failed" or phase == "Invalid" or phase == "RolledBack" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = phase .. ": " .. message
if phase == message then
  hs.message = phase
end
return hs
