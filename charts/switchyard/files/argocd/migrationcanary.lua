-- Argo CD health of a switchyard.dev MigrationCanary.
-- Healthy: Succeeded. Degraded: Failed, Invalid or RolledBack.
-- Progressing: Pending, Running, and a status not yet written for the
-- current generation.
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
if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" or phase == "Invalid" or phase == "RolledBack" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = phase
if s.message ~= nil and s.message ~= "" then
  hs.message = phase .. ": " .. s.message
end
return hs
